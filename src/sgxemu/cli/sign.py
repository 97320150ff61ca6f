"""`sgxemu sign`: MRENCLAVE of an enclave ELF computed offline, and its SIGSTRUCT."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from .errors import CliError, UsageLineError, emit_json, existing_file, parse_size

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ..loader.selftest_layout import EnclaveImage


RELOCATIONS_HELP = (
    "Who applies the ELF's R_X86_64_RELATIVE relocations: 'loader' (for the enclave base, "
    "before EADD: MRENCLAVE depends on the base) or 'enclave' (it relocates itself after entry)."
)
relocations_option = click.option(
    "--relocations", "relocations", type=click.Choice(["loader", "enclave"]), default="loader",
    show_default=True, help=RELOCATIONS_HELP,
)


def load_image(path: str, heap_size: int, relocations: str = "loader") -> EnclaveImage:
    """The ELF laid out by load.c's rules, or a one-line CliError."""
    from ..loader.selftest_layout import EnclaveFormatError, RelocationPolicy, load_segments

    elf = existing_file(path, "enclave")
    try:
        return load_segments(elf, heap_size=heap_size, relocation_policy=RelocationPolicy(relocations))
    except EnclaveFormatError as exc:
        raise CliError(
            str(exc), "give a 64-bit x86-64 enclave ELF laid out like the kernel selftest's test_encl.elf"
        ) from exc


def parse_base(text: str) -> int:
    """--base: an address in any base (0x... usually)."""
    try:
        return int(text, 0)
    except ValueError:
        raise UsageLineError(f"--base {text!r} is not a number", "write the address like 0x7f0000000000") from None


def image_at_base(image: EnclaveImage, base: int | None) -> EnclaveImage:
    """`image` as loaded at `base`; a one-line CliError when its MRENCLAVE needs a base and none was given."""
    if base is not None:
        try:
            return image.at_base(base)
        except ValueError as exc:
            raise CliError(str(exc), "SECS.BASEADDR must be naturally aligned: give an aligned --base") from exc
    if image.needs_base:
        raise CliError(
            f"{image.path}: {len(image.relocations)} relocations for the loader to apply make MRENCLAVE "
            "depend on the enclave base",
            f"give --base ADDR (where ELRANGE will be, a multiple of {image.encl_size:#x}), "
            "or --relocations enclave if the enclave relocates itself",
        )
    return image


def read_key(path: str) -> rsa.RSAPrivateKey:
    """An RSA-3072, e = 3 private key from a PEM file, or a one-line CliError."""
    from ..sign import SigningError, load_key

    p = existing_file(path, "key")
    try:
        return load_key(p)
    except SigningError as exc:
        what = str(exc)
        if what.startswith("cannot load PEM"):
            what = "not an unencrypted PEM private key"
        raise CliError(f"key {path}: {what}", "make one with 'sgxemu sign --gen-key KEY.pem'") from exc


def write_new_key(path: str) -> rsa.RSAPrivateKey:
    """A fresh RSA-3072, e = 3 key written to `path` (PEM, mode 0600); never overwrites."""
    from cryptography.hazmat.primitives import serialization

    from ..sign import generate_key

    p = Path(path)
    if p.exists():
        raise CliError(f"{path} already exists", "remove it or give --gen-key another file name")
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise CliError(f"cannot create {path} ({exc.strerror})", "check the directory exists and is writable") from exc
    with os.fdopen(fd, "wb") as f:
        key = generate_key()
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return key


@click.command(name="sign")
@click.argument("enclave", metavar="[ENCLAVE.elf]", required=False)
@click.option("--key", "key_path", metavar="KEY.pem", help="RSA-3072 private key, public exponent 3 (PEM).")
@click.option("--gen-key", "gen_key", metavar="FILE", help="Write a fresh RSA-3072 e=3 key to FILE (and sign with it).")
@click.option("--out", "out", metavar="FILE.sig", help="Where to write the SIGSTRUCT [default: ./NAME.sig for NAME.elf].")
@click.option("--heap", "heap", metavar="SIZE", default="4K", show_default=True,
              help="Heap load.c appends (unmeasured, but it sets the enclave size, hence MRENCLAVE).")
@click.option("--base", "base_text", metavar="ADDR", default=None,
              help="Enclave base (SECS.BASEADDR) to apply relocations for; needed when the loader applies them.")
@relocations_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(
    enclave: str | None, key_path: str | None, gen_key: str | None, out: str | None, heap: str,
    base_text: str | None, relocations: str, as_json: bool,
) -> None:
    """Compute MRENCLAVE offline (the kernel selftest's load.c layout) and write the SIGSTRUCT.

    \b
    sgxemu sign test_encl.elf --key key.pem             # writes ./test_encl.sig
    sgxemu sign --gen-key key.pem                       # a fresh RSA-3072 e=3 key
    sgxemu sign test_encl.elf --gen-key key.pem --out s.sig
    sgxemu sign reloc_encl.elf --key key.pem --base 0x7f0000000000   # relocations applied there
    """
    from ..linux.load import SECS_ATTRIBUTES, SECS_XFRM, measure, sign
    from ..sign import mrsigner_of_key

    if key_path and gen_key:
        raise CliError("--key and --gen-key both given", "give one: an existing key or a file for a new one")
    if enclave is None and not gen_key:
        raise CliError("no enclave given", "run 'sgxemu sign ENCLAVE.elf --key KEY.pem' (or --gen-key FILE)")
    if enclave is not None and not key_path and not gen_key:
        raise CliError("no key given", "add --key KEY.pem, or --gen-key FILE to make one")
    heap_size = parse_size(heap, "--heap", maximum=1 << 30)
    base = parse_base(base_text) if base_text is not None else None
    image = load_image(enclave, heap_size, relocations) if enclave is not None else None
    if image is not None:
        image = image_at_base(image, base)
    key = read_key(key_path) if key_path else write_new_key(gen_key or "")
    result: dict[str, Any] = {"key": key_path or gen_key, "key_generated": bool(gen_key)}
    result["mrsigner"] = mrsigner_of_key(key).hex()
    if image is not None:
        out_path = Path(out) if out else Path(Path(enclave or "").stem + ".sig")
        sigstruct = sign(image, key)
        try:
            out_path.write_bytes(sigstruct)
        except OSError as exc:
            raise CliError(f"cannot write {out_path} ({exc.strerror})", "give --out a writable path") from exc
        result.update(
            enclave=str(image.path),
            heap_size=heap_size,
            enclave_size=image.encl_size,
            relocations=len(image.relocations),
            relocated_for=image.relocated_for,
            mrenclave=measure(image).hex(),
            attributes=f"{SECS_ATTRIBUTES:#x}",
            xfrm=f"{SECS_XFRM:#x}",
            sigstruct=str(out_path),
        )
    if as_json:
        emit_json(result)
        return
    console = Console(highlight=False)
    if gen_key:
        console.print(f"key        {gen_key} (new RSA-3072, e=3)", soft_wrap=True)
    if image is not None:
        console.print(f"enclave    {result['enclave']} ({len(image.segments)} segments, "
                      f"heap {heap_size:#x}, ELRANGE size {image.encl_size:#x})", soft_wrap=True)
        if image.relocated_for is not None:
            console.print(f"relocated  {len(image.relocations)} relocations applied for base "
                          f"{image.relocated_for:#x} (MRENCLAVE is for that base only)", soft_wrap=True)
        console.print(f"MRENCLAVE  {result['mrenclave']}", soft_wrap=True)
    console.print(f"MRSIGNER   {result['mrsigner']}", soft_wrap=True)
    if image is not None:
        console.print(f"attributes {result['attributes']} (MODE64BIT), xfrm {result['xfrm']}", soft_wrap=True)
        console.print(f"SIGSTRUCT  {result['sigstruct']}", soft_wrap=True)
