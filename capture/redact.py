"""Redaction of captured content before it is stored.

Built-in patterns catch common secrets (provider and cloud keys, tokens, private keys); an org
adds its own (Organization.capture_redact_patterns). Every match becomes REPLACEMENT.

An org's patterns run on callers' text, so a pattern that backtracks badly could stall
ingestion for every org: they run under the `regex` module's timeout, and content whose
redaction does not finish in time is not stored at all (fail closed: `Unredactable`).
"""

import regex

REPLACEMENT = "[REDACTED]"
PATTERN_TIMEOUT_SECONDS = 0.05  # per pattern and text; a normal pattern takes microseconds
MAX_PATTERNS = 20
MAX_PATTERN_LENGTH = 200

BUILT_IN = (
    r"sk-[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic (sk-ant-...) and many OpenAI-compatible providers
    r"gh_[A-Za-z0-9_-]{20,}",  # Gatehouse caller keys (keys/services.py CALLER_KEY_PREFIX)
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"(?i)aws_secret_access_key[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}",
    r"AIza[0-9A-Za-z_-]{35}",  # Google API keys
    r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,}",  # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{22,}",
    r"xox[abprs]-[A-Za-z0-9-]{10,}",  # Slack tokens
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWTs
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}=*",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
)
_BUILT_IN = regex.compile("|".join(f"(?:{pattern})" for pattern in BUILT_IN), regex.DOTALL)


class Unredactable(Exception):
    """An org pattern did not finish in time on this text."""


def check_pattern(pattern: str) -> str:
    """'' when an org may use `pattern`, else why not (shown next to the field)."""
    if not pattern.strip():
        return "A pattern cannot be empty."
    if len(pattern) > MAX_PATTERN_LENGTH:
        return f"A pattern is at most {MAX_PATTERN_LENGTH} characters."
    try:
        compiled = regex.compile(pattern)
    except (regex.error, ValueError, OverflowError) as error:
        return f"Not a valid regular expression: {error}."
    try:  # a catastrophic pattern shows itself on a short adversarial text
        compiled.search("a" * 64 + "!", timeout=PATTERN_TIMEOUT_SECONDS)
    except TimeoutError:
        return "This pattern takes too long to match; simplify it."
    if compiled.search("", timeout=PATTERN_TIMEOUT_SECONDS) is not None:
        return "This pattern matches empty text; it must match something."
    return ""


def compile_patterns(patterns: list[str]) -> list[regex.Pattern]:
    """An org's stored patterns, compiled; one that no longer compiles is left out."""
    compiled = []
    for pattern in patterns[:MAX_PATTERNS]:
        try:
            compiled.append(regex.compile(pattern))
        except (regex.error, ValueError, OverflowError):
            continue
    return compiled


def redact(text: str, patterns: list[regex.Pattern]) -> tuple[str, int]:
    """(the text with every match replaced, how many were); Unredactable on a timeout."""
    text, count = _BUILT_IN.subn(REPLACEMENT, text)
    for pattern in patterns:
        try:
            text, found = pattern.subn(REPLACEMENT, text, timeout=PATTERN_TIMEOUT_SECONDS)
        except TimeoutError:
            raise Unredactable(pattern.pattern) from None
        count += found
    return text, count
