"""Every format ``mnv4 export`` writes, one ``ExportFormat`` object each (``mnv4.export.format``).

Adding a format: a module with an ``ExportFormat`` subclass (its name, suffix, precisions, ``write`` and ``runner``;
see ``mnv4.export.onnx.OnnxFormat``) and one line below. The pipeline, the CLI's ``--format`` choices, the ``--out``
suffix rule and the precision flags all read this list.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .aoti import AOTIFormat
from .coreml import CoreMLFormat
from .executorch import ExecuTorchFormat
from .format import ExportFormat
from .litert import LiteRTFormat
from .onnx import OnnxFormat

FORMATS: dict[str, ExportFormat] = {
    fmt.name: fmt for fmt in (OnnxFormat(), LiteRTFormat(), CoreMLFormat(), ExecuTorchFormat(), AOTIFormat())
}


def export_format(name: str | None, out: str | Path | None = None) -> ExportFormat:
    """The format called ``name`` or, without a name, the one whose suffix ``out`` has (one ``UserError`` when
    neither says)."""
    if name is not None:
        if name not in FORMATS:
            raise UserError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
        return FORMATS[name]
    suffix = Path(out).suffix if out is not None else ""
    for fmt in FORMATS.values():
        if fmt.suffix == suffix:
            return fmt
    suffixes = ", ".join(f"{fmt.suffix} ({fmt.name})" for fmt in FORMATS.values())
    raise UserError(f"--out {out}: cannot tell the format from its suffix; end it in one of {suffixes}, or pass "
                    "--format")
