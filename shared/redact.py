"""Credentials never reach a log line (issue 23: ``veil -v`` printed the S3 access key id from
botocore's debug logging: its request headers, ``Credential=AKID/...``, and the signing steps).

``install`` puts ``Redactor`` on every handler of the root logger: each record is formatted once
and any secret in it replaced by ``***``: the values of the secret settings and AWS variables
found in the environment, a password in a ``redis://user:password@`` URL, and the S3 signature
fields (``Credential=``, ``Signature=``, ``X-Amz-Security-Token``) whatever their value.
"""

from __future__ import annotations

import logging
import os
import re

#: environment variables whose values are secrets wherever they appear
SECRET_VARIABLES = (
    "VEIL_S3_ACCESS_KEY_ID",
    "VEIL_S3_SECRET_ACCESS_KEY",
    "VEIL_FLOWER_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "REDIS_PASSWORD",
)
_PATTERNS = (
    re.compile(r"(Credential=)[^/,\s'\"]+"),
    re.compile(r"(Signature=)[0-9a-fA-F]+"),
    re.compile(r"((?:X-Amz-Security-Token|x-amz-security-token)['\"]?[:=]\s*['\"]?b?['\"]?)[^'\",\s]+"),
    re.compile(r"((?:rediss?|amqps?)://[^:@/\s]*:)[^@/\s]+(?=@)"),  # the password in a broker URL
)
_MASK = "***"


def secrets_from_env(environ: dict[str, str] | os._Environ[str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return sorted({v for k in SECRET_VARIABLES if len(v := env.get(k, "")) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, _MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + _MASK, text)
    return text


class Redactor(logging.Filter):
    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install(secrets: list[str] | None = None) -> None:
    """Redacts every record the root logger's handlers emit (call after ``logging.basicConfig``)."""
    redactor = Redactor(secrets_from_env() if secrets is None else secrets)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, Redactor) for f in handler.filters):
            handler.addFilter(redactor)
