"""Key derivation for EGETKEY, EREPORT and the EINIT token MAC (SDM EGETKEY Table 38-66; spec §10).

The real derivation function, the layout of TMP_KEYDEPENDENCIES and the fused root key are not
public. This model follows the spec's recommendation [spec 10.2]: a key is AES-128-CMAC under the
processor's root key over a fixed serialization of the *whole* dependency record, every field the
leaf does not bind being zero, exactly as the SDM pseudocode zeroes it. So two requests get the
same key iff every bound input is equal, and a different `ProcessorConfig.seed` (root key, seal
fuses, owner epoch) gives unrelated keys.
"""

from __future__ import annotations

import struct
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from ..arch.constants import HARDCODED_PKCS1_5_PADDING, KEY_SIZE, KeyName
from ..arch.structs import EINITTOKEN_MAC_DATA_SIZE, REPORT_MAC_DATA_SIZE, Einittoken

if TYPE_CHECKING:
    from .processor import Processor

U128_MASK = (1 << 128) - 1
U32_MASK = 0xFFFF_FFFF

# One item per KeyDependencies field, in declaration order; integers little-endian. The 128-bit
# ATTRIBUTES/ATTRIBUTESMASK are FLAGS (low 64 bits) and XFRM (high 64 bits), as in memory.
_LAYOUT = struct.Struct("<HHH16s16s16s16s16s32s32s32s16s16s352sII64sHH")
_BYTE_FIELDS = {
    "isvextprodid": 16,
    "isvfamilyid": 16,
    "ownerepoch": 16,
    "mrenclave": 32,
    "mrsigner": 32,
    "keyid": 32,
    "seal_key_fuses": 16,
    "cpusvn": 16,
    "padding": 352,
    "configid": 64,
}
_INT_BITS = {
    "keyname": 16,
    "isvprodid": 16,
    "isvsvn": 16,
    "attributes": 128,
    "attributesmask": 128,
    "miscselect": 32,
    "miscmask": 32,
    "configsvn": 16,
    "keypolicy": 16,
}


@dataclass(frozen=True, slots=True)
class KeyDependencies:
    """TMP_KEYDEPENDENCIES: every input of derivekey(), named as the SDM names it.

    CET_ATTRIBUTES and its mask are not modelled (CET is not enumerated), so they are absent.
    """

    keyname: int = 0
    isvprodid: int = 0
    isvsvn: int = 0
    isvextprodid: bytes = bytes(16)
    isvfamilyid: bytes = bytes(16)
    ownerepoch: bytes = bytes(16)  # SGXOWNEREPOCH
    attributes: int = 0  # 128 bits: FLAGS | XFRM << 64
    attributesmask: int = 0  # 128 bits
    mrenclave: bytes = bytes(32)
    mrsigner: bytes = bytes(32)
    keyid: bytes = bytes(32)
    seal_key_fuses: bytes = bytes(16)
    cpusvn: bytes = bytes(16)
    padding: bytes = bytes(352)
    miscselect: int = 0
    miscmask: int = 0
    configid: bytes = bytes(64)
    configsvn: int = 0
    keypolicy: int = 0

    def __post_init__(self) -> None:
        for name, size in _BYTE_FIELDS.items():
            value = getattr(self, name)
            if len(value) != size:
                raise ValueError(f"KeyDependencies.{name} must be {size} bytes, got {len(value)}")
        for name, bits in _INT_BITS.items():
            if not 0 <= getattr(self, name) < 1 << bits:
                raise ValueError(f"KeyDependencies.{name} does not fit in {bits} bits")

    def serialize(self) -> bytes:
        """The canonical byte string the key is derived from (fixed size, field order as above)."""
        values = list(astuple(self))
        for i in (6, 7):  # ATTRIBUTES, ATTRIBUTESMASK
            values[i] = values[i].to_bytes(16, "little")
        return _LAYOUT.pack(*values)


SERIALIZED_SIZE = _LAYOUT.size


def attributes128(flags: int, xfrm: int) -> int:
    """A 128-bit ATTRIBUTES value from its FLAGS and XFRM halves."""
    return (flags & 0xFFFF_FFFF_FFFF_FFFF) | (xfrm & 0xFFFF_FFFF_FFFF_FFFF) << 64


def cmac(key: bytes, data: bytes) -> bytes:
    """AES-128-CMAC (the MAC of REPORT and EINITTOKEN, and this model's derivekey)."""
    c = CMAC(algorithms.AES128(key))
    c.update(data)
    return c.finalize()


def derive_key(cpu: Processor, deps: KeyDependencies) -> bytes:
    """derivekey(TMP_KEYDEPENDENCIES): 16 bytes under the processor's root key [spec 10.2]."""
    key = cmac(cpu.root_key, deps.serialize())
    assert len(key) == KEY_SIZE
    return key


def cpusvn_beyond(requested: bytes, current: bytes) -> bool:
    """True when a CPUSVN is beyond the current one: some component is higher (SDM16 39.4.2.2).

    [choice] The component split is not architectural; each of the 16 bytes is one component.
    """
    return any(r > c for r, c in zip(requested, current, strict=True))


# -- REPORT key (EREPORT for the target, EGETKEY(REPORT_KEY) for oneself) -----------------------


def report_key_dependencies(
    cpu: Processor,
    *,
    mrenclave: bytes,
    attributes: int,
    miscselect: int,
    configid: bytes,
    configsvn: int,
    keyid: bytes,
    padding: bytes,
) -> KeyDependencies:
    """The REPORT_KEY record (SDM EREPORT / EGETKEY): the target's identity, platform values."""
    return KeyDependencies(
        keyname=KeyName.REPORT_KEY,
        ownerepoch=cpu.owner_epoch,
        attributes=attributes,
        mrenclave=mrenclave,
        keyid=keyid,
        seal_key_fuses=cpu.seal_fuses,
        cpusvn=cpu.cpusvn,
        padding=padding,
        miscselect=miscselect,
        configid=configid,
        configsvn=configsvn,
    )


def report_mac(key: bytes, report: bytes) -> bytes:
    """REPORT.MAC: CMAC over REPORT bytes [0, 384) (SDM EREPORT)."""
    return cmac(key, bytes(report[:REPORT_MAC_DATA_SIZE]))


# -- EINITTOKEN key ----------------------------------------------------------------------------


def einittoken_key_dependencies(cpu: Processor, token: Einittoken) -> KeyDependencies:
    """The EINITTOKEN_KEY record EINIT rebuilds from a token's LE fields (SDM EINIT).

    It equals the record EGETKEY(EINITTOKEN_KEY) builds inside a launch enclave whose MRSIGNER
    is IA32_SGXLEPUBKEYHASH, when the LE copied its request into the token's *LE fields.
    """
    return KeyDependencies(
        keyname=KeyName.EINITTOKEN_KEY,
        isvprodid=token.isvprodidle,
        isvsvn=token.isvsvnle,
        ownerepoch=cpu.owner_epoch,
        attributes=attributes128(token.maskedattributesle, token.maskedxfrmle),
        mrsigner=cpu.lepubkeyhash,
        keyid=token.keyid,
        seal_key_fuses=cpu.seal_fuses,
        cpusvn=token.cpusvnle,
        padding=HARDCODED_PKCS1_5_PADDING,
        miscselect=token.maskedmiscselectle,
    )


def einittoken_key(cpu: Processor, token: Einittoken) -> bytes:
    """TMP_EINITTOKENKEY of EINIT."""
    return derive_key(cpu, einittoken_key_dependencies(cpu, token))


def einittoken_mac(key: bytes, token: bytes) -> bytes:
    """EINITTOKEN.MAC: CMAC over token bytes [0, 192) (SDM EINIT)."""
    return cmac(key, bytes(token[:EINITTOKEN_MAC_DATA_SIZE]))


__all__ = [
    "SERIALIZED_SIZE",
    "KeyDependencies",
    "attributes128",
    "cmac",
    "cpusvn_beyond",
    "derive_key",
    "einittoken_key",
    "einittoken_key_dependencies",
    "einittoken_mac",
    "report_key_dependencies",
    "report_mac",
]
