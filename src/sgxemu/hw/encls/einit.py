"""EINIT: verify SIGSTRUCT and EINITTOKEN, then mark the enclave initialized (SDM EINIT, spec 3.4, 8)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import (
    EINITTOKEN_ALIGN,
    EINITTOKEN_SIZE,
    PAGE_SIZE,
    SIGSTRUCT_SIZE,
    Attribute,
    EnclsLeaf,
    PageType,
    SgxError,
)
from ...arch.structs import (
    SECS_OFF_ATTRIBUTES,
    SECS_OFF_ISVPRODID,
    SECS_OFF_MRENCLAVE,
    SECS_OFF_MRSIGNER,
    Einittoken,
    Sigstruct,
)
from ..faults import GeneralProtection
from ..keys import attributes128, cpusvn_beyond, einittoken_key, einittoken_mac
from ..launch import mrsigner as sigstruct_mrsigner
from ..launch import sigstruct_format_valid, sigstruct_signature_padding
from ..leaves import encls_leaf
from ..operands import epc_page, epcm_fault, read_operand, require_aligned

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor

# ATTRIBUTES bits only a launch enclave's signer may set (SDM EINIT CONTROLLED_ATTRIBUTES).
CONTROLLED_ATTRIBUTES = int(Attribute.EINITTOKEN_KEY)
# EINITTOKEN reserved areas: the upper 31 VALID bits and the four reserved fields (SDM Table 38-20).
_TOKEN_RESERVED = ("reserved1", "reserved2", "reserved3", "reserved4")


def _token_reserved_clear(token: Einittoken) -> bool:
    # [choice] reserved4 (212..235) may hold CET_MASKED_ATTRIBUTES_LE; CET is not modelled, so
    # the whole area is reserved.
    return not token.valid & ~1 and not any(any(getattr(token, f)) for f in _TOKEN_RESERVED)


@encls_leaf(EnclsLeaf.EINIT)
def einit(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    require_aligned(rbx, PAGE_SIZE)
    require_aligned(rcx, PAGE_SIZE)
    require_aligned(rdx, EINITTOKEN_ALIGN)
    # [choice] The SECS is probed as a read, like the SECS operand of EADD and EEXTEND.
    index = epc_page(cpu, mem, rcx, False, False)
    raw_sig = read_operand(cpu, mem, rbx, SIGSTRUCT_SIZE, False)
    raw_token = read_operand(cpu, mem, rdx, EINITTOKEN_SIZE, False)
    if not sigstruct_format_valid(raw_sig):
        return SgxError.SGX_INVALID_SIG_STRUCT
    # The "event window": a pending unmasked event aborts EINIT. [choice] The event is taken as
    # soon as EINIT returns, so the flag is consumed and a retry proceeds (Linux retries).
    if cpu.einit_event_pending:
        cpu.einit_event_pending = False
        return SgxError.SGX_UNMASKED_EVENT
    padding = sigstruct_signature_padding(raw_sig)
    if padding is None:
        return SgxError.SGX_INVALID_SIGNATURE
    entry = cpu.epcm.get(index)
    if entry is None or entry.pt is not PageType.PT_SECS or entry.secs is None:
        raise epcm_fault(rcx)
    secs = entry.secs
    sig = Sigstruct.unpack(raw_sig)
    if any(sig.isvfamilyid) and not secs.attributes & Attribute.KSS:
        return SgxError.SGX_INVALID_SIG_STRUCT
    if secs.init:
        raise GeneralProtection()  # already initialized (SDM16 exceptions table)
    assert secs.measurement is not None
    mrenclave = secs.measurement.final()
    if sig.enclavehash != mrenclave:
        return SgxError.SGX_INVALID_MEASUREMENT
    mrsigner = sigstruct_mrsigner(sig.modulus)
    if secs.attributes & CONTROLLED_ATTRIBUTES and mrsigner != cpu.lepubkeyhash:
        return SgxError.SGX_INVALID_ATTRIBUTE
    secs_attrs = attributes128(secs.attributes, secs.xfrm)
    mask = attributes128(sig.attributemask, sig.xfrmmask)
    if secs_attrs & mask != attributes128(sig.attributes, sig.xfrm) & mask:
        return SgxError.SGX_INVALID_ATTRIBUTE
    if secs.miscselect & sig.miscmask != sig.miscselect & sig.miscmask:
        return SgxError.SGX_INVALID_ATTRIBUTE
    token = Einittoken.unpack(raw_token)
    if not token.valid & 1:
        if mrsigner != cpu.lepubkeyhash:
            return SgxError.SGX_INVALID_EINITTOKEN
    else:
        if token.maskedattributesle & Attribute.DEBUG and not secs.debug:
            return SgxError.SGX_INVALID_EINITTOKEN  # a debug LE cannot launch production enclaves
        if not _token_reserved_clear(token):
            return SgxError.SGX_INVALID_EINITTOKEN
        if cpusvn_beyond(token.cpusvnle, cpu.cpusvn):
            return SgxError.SGX_INVALID_CPUSVN
        if token.mac != einittoken_mac(einittoken_key(cpu, token), raw_token):
            return SgxError.SGX_INVALID_EINITTOKEN
        if token.mrenclave != mrenclave or token.mrsigner != mrsigner:
            return SgxError.SGX_INVALID_MEASUREMENT
        if attributes128(token.attributes, token.xfrm) != secs_attrs:
            # [choice] The SDM's SGX_INVALID_EINIT_ATTRIBUTE has no value; this is a token
            # defect, reported like the other token checks (software then asks for a new token).
            return SgxError.SGX_INVALID_EINITTOKEN
    # COMMIT: the hidden state, mirrored into the SECS page's architectural fields.
    secs.mrenclave = mrenclave
    secs.mrsigner = mrsigner
    secs.isvprodid = sig.isvprodid
    secs.isvsvn = sig.isvsvn
    secs.isvextprodid = sig.isvextprodid
    secs.isvfamilyid = sig.isvfamilyid
    secs.padding = padding
    secs.attributes |= int(Attribute.INIT)
    # [choice] The running hash is dropped: nothing may extend an initialized measurement.
    secs.measurement = None
    cpu.epc.write(index, SECS_OFF_ATTRIBUTES, secs.attributes.to_bytes(8, "little"))
    cpu.epc.write(index, SECS_OFF_MRENCLAVE, mrenclave)
    cpu.epc.write(index, SECS_OFF_MRSIGNER, mrsigner)
    cpu.epc.write(
        index,
        SECS_OFF_ISVPRODID,
        sig.isvprodid.to_bytes(2, "little") + sig.isvsvn.to_bytes(2, "little"),
    )
    return SgxError.SUCCESS
