"""`sgxemu measure FILE [--sig FILE] [--json]`: MRENCLAVE of an SDK enclave or SGXS stream,
and whether its SIGSTRUCT verifies and matches.

Exit status: 0 all good (or nothing to check), 1 a check failed (signature or measurement),
2 the input could not be read as an enclave (one line on stderr; the traceback only with
`sgxemu --debug`, as for every command, see `cli/errors.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..arch.constants import Attribute, Miscselect
from ..loader.errors import (
    EnclaveFormatError,
    InvalidMetadataError,
    NotAnEnclaveError,
    SgxsFormatError,
    SigstructFormatError,
    TruncatedFileError,
    UnknownMetadataVersionError,
    UnsignedEnclaveError,
    UnsupportedEnclaveError,
)
from ..loader.plan import Measurement, SigstructReport, check_sigstruct
from ..loader.sdk import SdkEnclave, parse_sdk_enclave
from ..loader.sdk_metadata import ELF_MAGIC
from ..loader.sgxs import SgxsEnclave, is_sgxs, parse_sgxs, read_sigstruct
from .errors import CliError, emit_json

EXIT_MISMATCH = 1

# What to do about each kind of bad input (the second half of the one-line message).
_HINTS: tuple[tuple[type[Exception], str], ...] = (
    (NotAnEnclaveError, "give an SGX SDK enclave (.signed.so) or an SGXS stream (.sgxs)"),
    (UnsignedEnclaveError, "sign it with sgx_sign first"),
    (UnknownMetadataVersionError, "this loader reads SDK metadata 1.x-3.x and 11.x-13.x"),
    (TruncatedFileError, "the file is incomplete; copy it again"),
    (InvalidMetadataError, "the SDK loader would refuse this enclave too"),
    (UnsupportedEnclaveError, "see docs/loading-sdk-enclaves.md for what is supported"),
    (SgxsFormatError, "give a canonical SGXS stream, as sgxs-tools write it"),
    (SigstructFormatError, "give a 1808-byte SIGSTRUCT file"),
)


class BadEnclaveInput(CliError):
    """The file (or --sig) cannot be read as an enclave: exit status 2."""

    exit_code = 2


def _bad_input(exc: Exception, path: Path) -> BadEnclaveInput:
    if isinstance(exc, OSError):
        return BadEnclaveInput(f"cannot read {path}: {exc.strerror}", "check the path and its permissions")
    hint = next((h for cls, h in _HINTS if isinstance(exc, cls)), "")
    return BadEnclaveInput(f"{path}: {exc}", hint)


def _flag_names(value: int, enum: type[Attribute] | type[Miscselect]) -> str:
    names = [m.name for m in enum if m.name and value & m.value]
    unknown = value & ~sum(m.value for m in enum)
    if unknown:
        names.append(f"{unknown:#x}")
    return "|".join(names) or "0"


def _open(path: Path) -> SdkEnclave | SgxsEnclave:
    data = path.read_bytes()
    if data[:4] == ELF_MAGIC:
        return parse_sdk_enclave(data, str(path))
    if is_sgxs(data):
        return parse_sgxs(data, str(path))
    raise NotAnEnclaveError("not an enclave: neither an ELF file nor an SGXS stream")


def _sig_dict(report: SigstructReport) -> dict[str, Any]:
    st = report.fields
    return {
        "enclavehash": st.enclavehash.hex(),
        "mrsigner": report.mrsigner.hex(),
        "isvprodid": st.isvprodid,
        "isvsvn": st.isvsvn,
        "vendor": st.vendor,
        "date": f"{st.date:08x}",
        "attributes": st.attributes,
        "attributemask": st.attributemask,
        "xfrm": st.xfrm,
        "xfrmmask": st.xfrmmask,
        "miscselect": st.miscselect,
        "miscmask": st.miscmask,
        "isvfamilyid": st.isvfamilyid.hex(),
        "isvextprodid": st.isvextprodid.hex(),
    }


def _describe(enc: SdkEnclave | SgxsEnclave) -> str:
    if isinstance(enc, SdkEnclave):
        return f"SGX SDK enclave, metadata {enc.metadata.version_str} (copies: {', '.join(enc.versions)})"
    extra = f", {enc.unmeasured_chunks} unmeasured chunks" if enc.unmeasured_chunks else ""
    return f"SGXS stream{extra}"


def _print_text(path: Path, enc: SdkEnclave | SgxsEnclave, m: Measurement, source: str | None,
                report: SigstructReport | None) -> None:
    def row(label: str, value: object) -> None:
        click.echo(f"{label:<12} {value}")

    row("file", path)
    row("format", _describe(enc))
    row("MRENCLAVE", f"{m.mrenclave.hex()}  ({m.eadd} EADD, {m.eextend} EEXTEND)")
    if report is None:
        row("SIGSTRUCT", "none (pass --sig FILE to check one)")
        return
    st = report.fields
    row("SIGSTRUCT", source)
    row("ENCLAVEHASH", st.enclavehash.hex())
    row("MRSIGNER", report.mrsigner.hex())
    row("ISVPRODID", st.isvprodid)
    row("ISVSVN", st.isvsvn)
    row("attributes", f"{st.attributes:#x} ({_flag_names(st.attributes, Attribute)}) mask {st.attributemask:#x}")
    row("xfrm", f"{st.xfrm:#x} mask {st.xfrmmask:#x}")
    row("miscselect", f"{st.miscselect:#x} ({_flag_names(st.miscselect, Miscselect)}) mask {st.miscmask:#x}")
    row("vendor", f"{st.vendor:#x}, date {st.date:08x}")
    row("signature", "valid" if report.format_ok and report.signature_ok else "INVALID")
    row("measurement", "matches ENCLAVEHASH" if report.measurement_ok else "MISMATCH")


@click.command("measure")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--sig", "sig_path", type=click.Path(path_type=Path),
              help="A detached SIGSTRUCT (.sig); for SDK enclaves it replaces the embedded one.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def command(ctx: click.Context, file: Path, sig_path: Path | None, as_json: bool) -> None:
    """Measure an SGX SDK enclave (.signed.so) or SGXS stream and check its SIGSTRUCT."""
    try:
        enc = _open(file)
        m = enc.measure()
    except (EnclaveFormatError, OSError) as exc:
        raise _bad_input(exc, file) from exc
    source: str | None = None
    sig: bytes | None = None
    if sig_path is not None:
        try:
            sig, source = read_sigstruct(sig_path), str(sig_path)
        except (EnclaveFormatError, OSError) as exc:
            raise _bad_input(exc, sig_path) from exc
    elif isinstance(enc, SdkEnclave):
        sig, source = enc.sigstruct, f"embedded (metadata {enc.metadata.version_str})"
    report = check_sigstruct(sig, m.mrenclave) if sig is not None else None
    if as_json:
        out: dict[str, Any] = {
            "file": str(file),
            "format": "sdk" if isinstance(enc, SdkEnclave) else "sgxs",
            "mrenclave": m.mrenclave.hex(),
            "eadd": m.eadd,
            "eextend": m.eextend,
        }
        if isinstance(enc, SdkEnclave):
            out["metadata_version"] = enc.metadata.version_str
            out["metadata_versions"] = enc.versions
        if report is not None:
            out["sigstruct_source"] = source
            out["sigstruct"] = _sig_dict(report)
            out["mrsigner"] = report.mrsigner.hex()
            out["signature_valid"] = report.format_ok and report.signature_ok
            out["measurement_matches"] = bool(report.measurement_ok)
            out["ok"] = report.ok
        emit_json(out)
    else:
        _print_text(file, enc, m, source, report)
    if report is not None and not report.ok:
        click.echo(f"Error: {file}: " + "; ".join(report.problems()), err=True)
        ctx.exit(EXIT_MISMATCH)
