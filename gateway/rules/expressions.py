"""CEL expressions (`expr` conditions): compiled once, bounded in length.

Its own module so that both the schema (which compiles an expression to validate a rule file)
and the conditions (which run it) can import it without importing each other.
"""

from __future__ import annotations

from typing import Any

# CEL parses and evaluates recursively; a long enough chain (`1+1+...`) overflows the stack and
# kills the process (measured: ~32k characters on the main thread, less on worker threads).
MAX_EXPR_CHARS = 4096


def compile_expression(source: str) -> Any:
    """Compile CEL once; raises ValueError (a syntax error) or RuntimeError (CEL not installed)."""
    try:
        import cel
    except ImportError:  # pragma: no cover - the rules extra pulls it in
        raise ValueError(
            "`expr` needs CEL: pip install 'edge-gateway[rules]' (common-expression-language)"
        ) from None
    if len(source) > MAX_EXPR_CHARS:
        raise ValueError(
            f"expr: {len(source)} characters; an expression may have at most {MAX_EXPR_CHARS}"
        )
    try:
        return cel.compile(source)
    except ValueError as exc:
        raise ValueError(f"expr: {str(exc).splitlines()[0]}") from None
