"""Storage problems in one line: missing filesystem packages, credentials, endpoints.

fsspec's filesystems raise their SDK's own exceptions (botocore,
google-auth, azure-core, aiohttp), with tracebacks of a hundred lines that
bury the cause. :func:`storage_errors` turns the ones a user can fix into a
builtin error that names the path and the fix (``PermissionError`` for
credentials, ``ConnectionError`` for an endpoint, ``ImportError`` for a
missing package), which the command prints in one line with exit 2. The
SDKs are recognised by their exceptions' names, so none is imported here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .._errors import DaskLLMError

__all__ = ["EXTRAS", "MissingFilesystem", "missing_filesystem", "storage_errors", "storage_problem"]

#: fsspec protocol -> the dask-llm extra that installs its filesystem.
EXTRAS = {
    "s3": "s3", "s3a": "s3",
    "gs": "gcs", "gcs": "gcs",
    "az": "azure", "abfs": "azure", "abfss": "azure", "adl": "azure",
}  # fmt: skip

_AWS_CREDENTIALS = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass "
    "--storage-option key=... --storage-option secret=... (--storage-option anon=true for a public bucket)"
)
_CREDENTIAL_ERRORS = {
    "NoCredentialsError": f"no AWS credentials found: {_AWS_CREDENTIALS}",
    "PartialCredentialsError": f"incomplete AWS credentials: {_AWS_CREDENTIALS}",
    "DefaultCredentialsError": "no Google Cloud credentials found: run `gcloud auth application-default login` "
    "or set GOOGLE_APPLICATION_CREDENTIALS (--storage-option token=anon for a public bucket)",
    "RefreshError": "the Google Cloud credentials were refused (expired or revoked)",
    "ClientAuthenticationError": "Azure refused the credentials: set AZURE_STORAGE_CONNECTION_STRING, or pass "
    "--storage-option account_name=... with account_key=... or sas_token=...",
}
_CONNECTION_ERRORS = ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ServiceRequestError")
_REFUSED_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "403")


class MissingFilesystem(ImportError):
    """A URL's fsspec filesystem is not installed."""


def missing_filesystem(path: str, exc: ImportError, what: str) -> ImportError:
    """The error for ``what`` at ``path`` whose fsspec filesystem is not installed, naming the extra."""
    protocol = path.partition("://")[0].lower() if "://" in path else ""
    extra = EXTRAS.get(protocol)
    if extra is None:
        return MissingFilesystem(f"cannot open {what} {path!r}: {exc}")
    return MissingFilesystem(f"{what} {path!r} needs the {protocol}:// filesystem: pip install 'dask-llm[{extra}]'")


def storage_problem(exc: BaseException) -> BaseException | None:
    """A one-line builtin error for ``exc`` (or what caused it) when it is a
    storage problem a user can fix; ``None`` otherwise."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names = {cls.__name__ for cls in type(current).__mro__}
        message = " ".join(str(current).split())
        for name, why in _CREDENTIAL_ERRORS.items():
            if name in names:
                return PermissionError(why)
        if names & set(_CONNECTION_ERRORS):
            return ConnectionError(f"cannot connect to the storage endpoint: {message}")
        if "ClientError" in names and "botocore" in type(current).__module__:
            code = str(getattr(current, "response", {}).get("Error", {}).get("Code", ""))
            if code in _REFUSED_CODES:
                return PermissionError(f"the storage refused the request ({code}): {message}")
            if code == "NoSuchBucket":
                return FileNotFoundError(f"no such bucket: {message}")
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def storage_errors(what: str, path: str) -> Iterator[None]:
    """Turn a storage problem inside the block into a one-line error naming
    ``what`` (``"input"``, ``"output"``, ``"checkpoint"``) and ``path``."""
    try:
        yield
    except DaskLLMError as exc:
        # e.g. a CheckpointError caused by the storage: say the fix, not only the SDK's words.
        if isinstance(exc.__cause__, ImportError):
            raise missing_filesystem(path, exc.__cause__, what) from None
        problem = storage_problem(exc.__cause__) if exc.__cause__ is not None else None
        if problem is None:
            raise
        raise type(problem)(f"{what} {path!r}: {problem}") from exc
    except MissingFilesystem:
        raise
    except ImportError as exc:
        raise missing_filesystem(path, exc, what) from None
    except Exception as exc:
        problem = storage_problem(exc)
        if problem is None:
            raise
        raise type(problem)(f"{what} {path!r}: {problem}") from exc
