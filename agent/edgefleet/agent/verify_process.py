"""Bundle checks in a short-lived child process: :class:`VerifyProcess`.

Why: the signature checks need ``cryptography`` (about 6.5 MB resident) and
the bundle reader ``tarfile``-style code; a long-running process that loaded
them once keeps them for life, on a device where the user's application
needs the memory. The daemon therefore verifies every bundle it loads or
installs in a child, ``python -m edgefleet.agent.verify_process --trust
PATH``, that exits when the daemon closes its stdin.

Protocol: the parent writes one JSON request per line on the child's stdin;
the child answers each, in order, on stdout with a framed JSON header (an
8-byte big-endian length, then the JSON); when the header says ``ok``, the
raw bytes of every member it reads follow, then a framed verdict on them::

    {"op": "load", "dir": D, "read": ["model.onnx"]}
        signatures over manifest.json (the trust store's threshold), canonical
        form, size and sha256 of every listed file; the members in "read" are
        streamed (exactly the manifest's size each), hashed in the same read
        that sends them, and the verdict says whether they matched
    {"op": "extract", "file": F, "dest": D, "max_bundle_bytes": n | null}
        BundleVerifier.verify_and_extract(F, D) (D appears only when complete)
    {"op": "trust"}
        only the trust store (read when the child started)
    {"op": "directive", "envelope": E, "device_id": D, "last_seq": n | null, "now": t}
        core.directive.check_directive against the trust store; the header
        carries the checked "directive" (no members follow)

    {"ok": true, "manifest": {...}, "members": [[name, size], ...],
     "sha256": s | null, "size": n | null, "signer_keyids": [...]}
    {"ok": false, "error": "SignatureError", "message": "...", "errno": n (an OS error's)}
    verdict: {"ok": true} or {"ok": false, "error": ..., "message": ...}

Invariants:

- The child reads the trust store when it starts, so every load is checked
  against the trust store as it is on disk at that moment.
- For a ``load``, the bytes the parent hands to onnxruntime are the bytes the
  child hashed: they travel through the pipe (in chunks: the child never holds
  a whole model), the parent does not read the model from disk, and uses them
  only when the verdict that follows them says they matched the manifest.
  (After an ``extract`` the parent may load the extracted model itself, hashing
  it against the manifest the child returned: see ``deploy/loader.py``.)
- A refusal is raised in the parent as the same edgefleet error class the
  checks raised in the child (``SignatureError``, ``BundleError``... so exit
  codes and reasons do not depend on where the check ran); a child that dies
  or answers garbage is a :class:`~edgefleet.agent.errors.ModelLoadError`.
- Importing this module loads nothing of the signature code; only the
  child's :func:`main` does.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edgefleet.agent.errors import ModelLoadError
from edgefleet.core.errors import BundleError, EdgefleetError
from edgefleet.core.manifest import Manifest

MODULE = "edgefleet.agent.verify_process"
MODEL_MEMBER = "model.onnx"
_HEADER_LEN = 8
_MAX_HEADER_BYTES = 4 << 20


@dataclass(frozen=True)
class CheckedBundle:
    """What the child verified: the manifest, the members it read, and for a file its hash."""

    manifest: Manifest
    members: dict[str, bytes] = field(default_factory=dict)
    sha256: str | None = None
    size: int | None = None
    signer_keyids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChildBundleChecker:
    """The deployment driver's bundle check in a child: ``checker(file, dest)``.

    Same as ``BundleVerifier(trust, max_bundle_bytes).verify_and_extract(file,
    dest)``, with the trust store read from ``trust_path`` by the child.
    """

    trust_path: Path
    max_bundle_bytes: int | None = None

    def __call__(self, file: Path, dest: Path) -> CheckedBundle:
        with VerifyProcess(self.trust_path) as process:
            return process.extract(file, dest, self.max_bundle_bytes)


def _error_for(name: str, message: str, errno: object = None) -> EdgefleetError:
    """The edgefleet error class called ``name`` (agent or core), else a ModelLoadError.

    ``errno``, when the child's error came from an OS error, becomes the error's cause
    again, so the parent can tell a full disk from any other failure.
    """
    from edgefleet.agent import errors as agent_errors
    from edgefleet.core import errors as core_errors

    error: EdgefleetError = ModelLoadError(f"bundle verification failed: {message}")
    for module in (agent_errors, core_errors):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, EdgefleetError):
            error = cls(message)
            break
    if isinstance(errno, int) and not isinstance(errno, bool):
        error.__cause__ = OSError(errno, os.strerror(errno))
    return error


class VerifyProcess:
    """One verification child; requests are answered in the order they were sent.

    ``with VerifyProcess(trust_path) as p: checked = p.load(bundle_dir)``; or
    send several requests first (``send_load``) and collect the answers
    (``reply``) while the child works in parallel with the caller.
    """

    def __init__(self, trust_path: Path, *, python: str | None = None) -> None:
        self.trust_path = Path(trust_path)
        self._python = python or sys.executable
        self._child: _Child | None = None
        self._outstanding = 0
        self.returncode: int | None = None

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> VerifyProcess:
        if self._child is None:
            argv = [self._python, "-m", MODULE, "--trust", str(self.trust_path)]
            try:
                self._child = _Child.spawn(argv)
            except OSError as e:
                raise ModelLoadError(f"cannot start the bundle verification process: {e}") from e
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Let the child finish (it exits once its stdin closes; killed after ``timeout_s``).

        With answers still owed the child is killed at once: it only reads and
        hashes for a load, and nobody wants those answers any more.
        """
        child, self._child = self._child, None
        if child is not None:
            self.returncode = child.finish(0.0 if self._outstanding else timeout_s)
        self._outstanding = 0

    def __enter__(self) -> VerifyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True until the child was closed (or died and was reaped)."""
        return self._child is not None

    def send_trust_check(self) -> None:
        self._send({"op": "trust"})

    def trust_reply(self) -> bool:
        """The answer to a trust check: True, or the child's AgentConfigError raised."""
        self._read_header()
        self._read_verdict()
        return True

    def check_trust(self) -> None:
        self.send_trust_check()
        self.trust_reply()

    def check_directive(
        self, envelope: Any, device_id: str, last_seq: int | None, now: float
    ) -> dict[str, Any]:
        """The directive ``check_directive`` accepted (as a dict); raises its DirectiveError."""
        self._send(
            {
                "op": "directive",
                "envelope": envelope,
                "device_id": device_id,
                "last_seq": last_seq,
                "now": now,
            }
        )
        header = self._read_header()
        self._read_verdict()
        if not isinstance(header.get("directive"), dict):
            raise self._died("an answer without a directive")
        return dict(header["directive"])

    def send_load(self, bundle_dir: Path, read: Sequence[str] = (MODEL_MEMBER,)) -> None:
        self._send({"op": "load", "dir": str(bundle_dir), "read": list(read)})

    def send_extract(self, file: Path, dest: Path, max_bundle_bytes: int | None) -> None:
        self._send(
            {
                "op": "extract",
                "file": str(file),
                "dest": str(dest),
                "max_bundle_bytes": max_bundle_bytes,
            }
        )

    def load(self, bundle_dir: Path, read: Sequence[str] = (MODEL_MEMBER,)) -> CheckedBundle:
        self.send_load(bundle_dir, read)
        return self.reply()

    def extract(self, file: Path, dest: Path, max_bundle_bytes: int | None) -> CheckedBundle:
        self.send_extract(file, dest, max_bundle_bytes)
        return self.reply()

    def _send(self, request: dict[str, Any]) -> None:
        child = self.start()._child
        assert child is not None
        try:
            child.stdin.write(json.dumps(request).encode() + b"\n")
            child.stdin.flush()
        except OSError as e:
            raise self._died(f"cannot send a request: {e}") from e
        self._outstanding += 1

    def _read_header(self) -> dict[str, Any]:
        child = self._child
        if child is None or self._outstanding == 0:
            raise ModelLoadError("no bundle verification request is outstanding")
        self._outstanding -= 1
        return self._read_frame()

    def _read_verdict(self) -> None:
        """The verdict on the streamed members; raises the child's refusal."""
        self._read_frame()

    def _read_frame(self) -> dict[str, Any]:
        child = self._child
        if child is None:
            raise ModelLoadError("the bundle verification process is gone")
        raw = _read_exactly(child.stdout, _HEADER_LEN)
        length = int.from_bytes(raw, "big") if raw is not None else -1
        if raw is None or not 0 < length <= _MAX_HEADER_BYTES:
            raise self._died("no answer")
        body = _read_exactly(child.stdout, length)
        try:
            header = json.loads(body) if body is not None else None
        except ValueError:
            header = None
        if not isinstance(header, dict):
            raise self._died("an unreadable answer")
        if not header.get("ok"):
            raise _error_for(
                str(header.get("error")), str(header.get("message")), header.get("errno")
            )
        return header

    def reply(self) -> CheckedBundle:
        """The answer to the oldest load or extract not answered yet; raises the refusal."""
        header = self._read_header()
        child = self._child
        assert child is not None
        members: dict[str, bytes] = {}
        for name, size in header.get("members", []):
            data = _read_exactly(child.stdout, int(size))
            if data is None:
                raise self._died(f"a truncated {name}")
            members[str(name)] = data
        self._read_verdict()
        if not isinstance(header.get("manifest"), dict):
            raise self._died("an answer without a manifest")
        try:
            # The child checked this manifest; parsing it again here only rebuilds the
            # object (no trust decision is taken in this process).
            manifest = Manifest.from_dict(header["manifest"])
        except BundleError as e:
            raise self._died(f"an unreadable manifest ({e})") from e
        return CheckedBundle(
            manifest=manifest,
            members=members,
            sha256=header.get("sha256"),
            size=header.get("size"),
            signer_keyids=tuple(header.get("signer_keyids", ())),
        )

    def _died(self, what: str) -> ModelLoadError:
        self.close(timeout_s=2.0)
        return ModelLoadError(
            f"bundle verification process failed: {what} (exit {self.returncode}; "
            "its error, if any, is in the agent's log)"
        )


class _Child:
    """The child process: pid and pipes; started with ``posix_spawn`` (no ``subprocess``).

    Its stderr is the daemon's (a crash shows up in the daemon's log).
    """

    def __init__(self, pid: int, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout

    @classmethod
    def spawn(cls, argv: list[str]) -> _Child:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            pid = os.posix_spawn(
                argv[0],
                argv,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1)],
            )
        except BaseException:
            for fd in (in_w, out_r):
                os.close(fd)
            raise
        finally:
            os.close(in_r)
            os.close(out_w)
        return cls(pid, os.fdopen(in_w, "wb"), os.fdopen(out_r, "rb"))

    def finish(self, timeout_s: float) -> int:
        """Close the pipes, wait for the exit (SIGKILL after ``timeout_s``); the exit code."""
        for stream in (self.stdin, self.stdout):
            try:
                stream.close()
            except OSError:
                pass
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() >= deadline:
                os.kill(self.pid, signal.SIGKILL)
                return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            time.sleep(0.005)


def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    chunks = []
    while n > 0:
        chunk = stream.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


# --- the child ------------------------------------------------------------------------
_CHUNK = 1 << 16


@dataclass
class _MemberStream:
    """One member sent as exactly ``size`` bytes, hashed on the way; ``problem`` after."""

    path: Path
    size: int
    sha256: str

    def send(self, out: IO[bytes]) -> EdgefleetError | None:
        import hashlib

        digest = hashlib.sha256()
        left = self.size
        problem: EdgefleetError | None = None
        try:
            with open(self.path, "rb") as f:
                while left > 0:
                    chunk = f.read(min(_CHUNK, left))
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    left -= len(chunk)
                longer = bool(f.read(1))
        except OSError as e:
            problem = ModelLoadError(f"cannot read {self.path}: {e.strerror or e}")
            longer = False
        if left > 0:  # the framing needs the announced size: pad, and refuse below
            out.write(bytes(left))
        if problem is None and (left or longer or digest.hexdigest() != self.sha256):
            from edgefleet.core.errors import BundleError

            problem = BundleError(
                f"{self.path} does not match the manifest (size or sha256 differ): the "
                "bundle directory was modified after verification"
            )
        return problem


def _handle(request: dict[str, Any], trust: Any) -> tuple[dict[str, Any], list[_MemberStream]]:
    from edgefleet.agent.runtime_verify import verify_bundle_dir
    from edgefleet.core.errors import BundleError

    op = request.get("op")
    if op == "trust":
        return {"ok": True}, []
    if op == "load":
        bundle_dir = Path(request["dir"])
        read = [str(m) for m in request.get("read", [])]
        manifest = verify_bundle_dir(bundle_dir, trust, skip=read)
        streams = []
        for member in read:
            entry = manifest.file(member)
            if entry is None:
                raise BundleError(f"manifest of {bundle_dir} lists no {member}")
            streams.append(_MemberStream(bundle_dir / member, entry.size, entry.sha256))
        header = {
            "ok": True,
            "manifest": manifest.to_dict(),
            "members": [[m, s.size] for m, s in zip(read, streams, strict=True)],
        }
        return header, streams
    if op == "directive":
        from edgefleet.core.directive import check_directive

        last_seq = request.get("last_seq")
        envelope: Any = request.get("envelope")  # any JSON: check_directive judges it
        directive = check_directive(
            envelope,
            trust,
            str(request.get("device_id")),
            None if last_seq is None else int(last_seq),
            float(request["now"]),
        )
        return {"ok": True, "directive": directive.to_dict(), "members": []}, []
    if op == "extract":
        from edgefleet.core.bundle_verifier import BundleVerifier

        verifier = BundleVerifier(trust, max_bundle_bytes=request.get("max_bundle_bytes"))
        verified = verifier.verify_and_extract(Path(request["file"]), Path(request["dest"]))
        header = {
            "ok": True,
            "manifest": verified.manifest.to_dict(),
            "members": [],
            "sha256": verified.sha256,
            "size": verified.size,
            "signer_keyids": list(verified.signer_keyids),
        }
        return header, []
    raise ValueError(f"unknown request {op!r}")


def _refusal(e: Exception) -> dict[str, Any]:
    if isinstance(e, EdgefleetError):
        refusal = {"ok": False, "error": type(e).__name__, "message": str(e)}
    else:
        refusal = {"ok": False, "error": "unexpected", "message": f"{type(e).__name__}: {e}"}
    cause: BaseException | None = e
    for _ in range(16):  # a bounded walk: exception chains can be cyclic
        if cause is None or isinstance(cause, OSError):
            break
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.errno is not None:
        refusal["errno"] = cause.errno  # the parent tells a full disk from other faults
    return refusal


def _write_frame(out: IO[bytes], document: dict[str, Any]) -> None:
    data = json.dumps(document).encode()
    out.write(len(data).to_bytes(_HEADER_LEN, "big") + data)


def _load_trust(path: Path) -> Any:
    from edgefleet.agent.errors import AgentConfigError
    from edgefleet.core.trust import TrustStore

    try:
        return TrustStore.load(path)
    except EdgefleetError as e:
        return AgentConfigError(f"field 'agent.trust_store': {e}")
    except OSError as e:
        return AgentConfigError(f"field 'agent.trust_store': cannot read {path}: {e}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--trust":
        sys.stderr.write(f"usage: python -m {MODULE} --trust TRUST_JSON\n")
        return 2
    trust = _load_trust(Path(args[1]))
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        try:
            if isinstance(trust, Exception):
                raise trust
            header, streams = _handle(json.loads(line), trust)
        except Exception as e:  # reported to the parent; never a traceback on its pipe
            header, streams = _refusal(e), []
        try:
            _write_frame(out, header)
            if header["ok"]:
                problems = [stream.send(out) for stream in streams]
                problem = next((p for p in problems if p is not None), None)
                _write_frame(out, {"ok": True} if problem is None else _refusal(problem))
            out.flush()
        except BrokenPipeError:  # the parent stopped listening: nothing left to do
            os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
