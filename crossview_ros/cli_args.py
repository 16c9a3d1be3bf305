"""Small argv helpers shared by the command-line tools."""

from __future__ import annotations


def join_negative_fix(argv: list[str], option: str = "--fix") -> list[str]:
    """argparse reads `--fix -33.8,151.2` as two options; glue a negative value onto its option."""
    out: list[str] = []
    k = 0
    while k < len(argv):
        nxt = argv[k + 1] if k + 1 < len(argv) else ""
        if argv[k] == option and len(nxt) > 1 and nxt[0] == "-" and (nxt[1].isdigit() or nxt[1] == "."):
            out.append(f"{option}={nxt}")
            k += 2
        else:
            out.append(argv[k])
            k += 1
    return out
