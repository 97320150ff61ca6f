"""EGETKEY: derive a 128-bit key bound to the running enclave (SDM EGETKEY, Table 38-66; spec 4.6, 10)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import (
    HARDCODED_PKCS1_5_PADDING,
    KEY_ALIGN,
    KEYPOLICY_KSS_MASK,
    KEYPOLICY_RESERVED_MASK,
    KEYREQUEST_ALIGN,
    KEYREQUEST_SIZE,
    PAGE_SIZE,
    Attribute,
    EncluLeaf,
    KeyName,
    KeyPolicy,
    SgxError,
)
from ...arch.structs import Keyrequest
from ..faults import GeneralProtection
from ..keys import (
    U32_MASK,
    KeyDependencies,
    attributes128,
    cpusvn_beyond,
    derive_key,
    report_key_dependencies,
)
from ..leaves import enclu_leaf
from ..regs import Reg, set_result
from .ereport import enclave_operand

if TYPE_CHECKING:
    from ..lp import LogicalProcessor
    from ..memory import AddressSpace
    from ..processor import Processor
    from ..regs import RegisterFile
    from ..secs import SecsState

# INIT and DEBUG are bound into every key that takes a mask (SDM REQUIRED_SEALING_MASK).
REQUIRED_SEALING_MASK = int(Attribute.INIT | Attribute.DEBUG)


def _svn_error(cpu: Processor, secs: SecsState, req: Keyrequest) -> int:
    """The CPUSVN then ISVSVN checks shared by every key with requested SVNs."""
    if cpusvn_beyond(req.cpusvn, cpu.cpusvn):
        return SgxError.SGX_INVALID_CPUSVN
    if req.isvsvn > secs.isvsvn:
        return SgxError.SGX_INVALID_ISVSVN
    return SgxError.SUCCESS


def _dependencies(cpu: Processor, secs: SecsState, req: Keyrequest) -> KeyDependencies | int:
    """TMP_KEYDEPENDENCIES for the request, or the error code of the per-KEYNAME checks."""
    tmp_attributes = attributes128(
        (req.attributemask | REQUIRED_SEALING_MASK) & secs.attributes, req.xfrmmask & secs.xfrm
    )
    attributesmask = attributes128(req.attributemask, req.xfrmmask)
    tmp_miscselect = req.miscmask & secs.miscselect
    policy = req.keypolicy
    name = req.keyname
    if name == KeyName.SEAL_KEY:
        code = _svn_error(cpu, secs, req)
        if code:
            return code
        if req.configsvn > secs.configsvn:
            return SgxError.SGX_INVALID_ISVSVN
        return KeyDependencies(
            keyname=KeyName.SEAL_KEY,
            isvprodid=0 if policy & KeyPolicy.NOISVPRODID else secs.isvprodid,
            isvsvn=req.isvsvn,
            isvextprodid=secs.isvextprodid if policy & KeyPolicy.ISVEXTPRODID else bytes(16),
            isvfamilyid=secs.isvfamilyid if policy & KeyPolicy.ISVFAMILYID else bytes(16),
            ownerepoch=cpu.owner_epoch,
            attributes=tmp_attributes,
            attributesmask=attributesmask,
            mrenclave=secs.mrenclave if policy & KeyPolicy.MRENCLAVE else bytes(32),
            mrsigner=secs.mrsigner if policy & KeyPolicy.MRSIGNER else bytes(32),
            keyid=req.keyid,
            seal_key_fuses=cpu.seal_fuses,
            cpusvn=req.cpusvn,
            padding=secs.padding,
            miscselect=tmp_miscselect,
            miscmask=~req.miscmask & U32_MASK,
            configid=secs.config_id if policy & KeyPolicy.CONFIGID else bytes(64),
            configsvn=req.configsvn if policy & KeyPolicy.CONFIGID else 0,
            keypolicy=policy,
        )
    if name == KeyName.REPORT_KEY:
        return report_key_dependencies(
            cpu,
            mrenclave=secs.mrenclave,
            attributes=attributes128(secs.attributes, secs.xfrm),
            miscselect=secs.miscselect,
            configid=secs.config_id,
            configsvn=secs.configsvn,
            keyid=req.keyid,
            padding=HARDCODED_PKCS1_5_PADDING,
        )
    if name == KeyName.EINITTOKEN_KEY:
        # The pseudocode tests the attribute only; EINIT allowed it only for the LE's signer.
        if not secs.attributes & Attribute.EINITTOKEN_KEY:
            return SgxError.SGX_INVALID_ATTRIBUTE
        code = _svn_error(cpu, secs, req)
        if code:
            return code
        return KeyDependencies(
            keyname=KeyName.EINITTOKEN_KEY,
            isvprodid=secs.isvprodid,
            isvsvn=req.isvsvn,
            ownerepoch=cpu.owner_epoch,
            attributes=tmp_attributes,
            mrsigner=secs.mrsigner,
            keyid=req.keyid,
            seal_key_fuses=cpu.seal_fuses,
            cpusvn=req.cpusvn,
            padding=secs.padding,
            miscselect=tmp_miscselect,
        )
    if name in (KeyName.PROVISION_KEY, KeyName.PROVISION_SEAL_KEY):
        if not secs.attributes & Attribute.PROVISIONKEY:
            return SgxError.SGX_INVALID_ATTRIBUTE
        code = _svn_error(cpu, secs, req)
        if code:
            return code
        if name == KeyName.PROVISION_KEY:
            # No OWNEREPOCH, SEAL_FUSES or KEYID: the key survives an owner change.
            return KeyDependencies(
                keyname=KeyName.PROVISION_KEY,
                isvprodid=secs.isvprodid,
                isvsvn=req.isvsvn,
                attributes=tmp_attributes,
                attributesmask=attributesmask,
                mrsigner=secs.mrsigner,
                cpusvn=req.cpusvn,
                padding=secs.padding,
                miscselect=tmp_miscselect,
                miscmask=~req.miscmask & U32_MASK,
            )
        return KeyDependencies(
            keyname=KeyName.PROVISION_SEAL_KEY,
            isvprodid=0 if policy & KeyPolicy.NOISVPRODID else secs.isvprodid,
            isvsvn=req.isvsvn,
            isvextprodid=secs.isvextprodid if policy & KeyPolicy.ISVEXTPRODID else bytes(16),
            isvfamilyid=secs.isvfamilyid if policy & KeyPolicy.ISVFAMILYID else bytes(16),
            attributes=tmp_attributes,
            attributesmask=attributesmask,
            mrsigner=secs.mrsigner,
            seal_key_fuses=cpu.seal_fuses,
            cpusvn=req.cpusvn,
            padding=secs.padding,
            miscselect=tmp_miscselect,
            miscmask=~req.miscmask & U32_MASK,
            configid=secs.config_id if policy & KeyPolicy.CONFIGID else bytes(64),
            configsvn=req.configsvn if policy & KeyPolicy.CONFIGID else 0,
            keypolicy=policy,
        )
    return SgxError.SGX_INVALID_KEYNAME


@enclu_leaf(EncluLeaf.EGETKEY)
def egetkey(cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace) -> None:
    secs = lp.secs
    assert secs is not None
    rbx, rcx = regs[Reg.RBX], regs[Reg.RCX]
    req_index = enclave_operand(cpu, lp, mem, rbx, KEYREQUEST_ALIGN, False)
    out_index = enclave_operand(cpu, lp, mem, rcx, KEY_ALIGN, True)
    off = PAGE_SIZE - 1
    req = Keyrequest.unpack(cpu.epc.read(req_index, rbx & off, KEYREQUEST_SIZE))
    # [choice] reserved1 (bytes 6-7, CET_ATTRIBUTES_MASK on CET parts) is reserved: no CET here.
    if any(req.reserved1) or any(req.reserved2) or req.keypolicy & KEYPOLICY_RESERVED_MASK:
        raise GeneralProtection()
    if not secs.attributes & Attribute.KSS and (
        req.keypolicy & KEYPOLICY_KSS_MASK or req.configsvn
    ):
        raise GeneralProtection()
    deps = _dependencies(cpu, secs, req)
    if isinstance(deps, int):
        set_result(regs, deps)  # the output is left unmodified
    else:
        cpu.epc.write(out_index, rcx & off, derive_key(cpu, deps))
        set_result(regs, SgxError.SUCCESS)
    regs[Reg.RIP] = regs[Reg.RIP] + 3
