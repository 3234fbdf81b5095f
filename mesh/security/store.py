"""The PKI directory: the mesh CA and issued certificates as files.

Layout of `<pki_dir>` (MESH_PKI_DIR, default `.run/pki`; the directory is 0700):

    ca.crt  ca.key            the mesh CA (or MESH_CA_CERT_FILE / MESH_CA_KEY_FILE: your own)
    <name>.crt  <name>.key    an identity issued by `meshctl pki issue <name>` (keys 0600)
    service-secret            the secret the services derive their signing keys from
                              (`meshctl pki init` makes it, 0600; MESH_SERVICE_SECRET wins)
    published/<name>          moved in after <name>'s key and certificate are both written:
                              the directory a reader that reloads on any move watches
                              (Envoy's SDS `watched_directory`), so it reloads once, with
                              a matching pair, instead of once per file

Every file is written atomically (a temporary file in the same directory,
fsynced, then renamed), so a process reloading a certificate never reads half
of one. Creating the CA holds an exclusive lock on `<pki_dir>/.lock`, so two
`meshctl up` starting at once make one CA, not two.

Limits: the CA key sits on the same disk as the leaves (fine for one machine
and for a compose volume; a production mesh keeps it offline or in a KMS and
names only its certificate here).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from mesh.security.pki import (
    CA_NAME,
    KeyPair,
    PkiError,
    check_pair,
    create_ca,
    describe,
    issue,
)
from mesh.settings import SecuritySettings

CA_LIFETIME = dt.timedelta(days=365)
PUBLISHED_DIR = "published"
SERVICE_SECRET_FILE = "service-secret"


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` (file mode `mode`) so readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask does not get a say
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class PkiStore:
    """Reads and writes the CA and the issued identities of one trust domain."""

    def __init__(self, security: SecuritySettings) -> None:
        self.security = security
        self.dir = Path(security.pki_dir)
        self.ca_cert_path = Path(security.ca_cert_file or self.dir / f"{CA_NAME}.crt")
        self.ca_key_path = Path(security.ca_key_file or self.dir / f"{CA_NAME}.key")

    @property
    def trust_domain(self) -> str:
        return self.security.trust_domain

    @property
    def lifetime(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.security.cert_lifetime_s)

    def cert_path(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key_path(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    # -- directory -------------------------------------------------------------------------

    def ensure_dir(self) -> None:
        """Create the directory 0700; refuse one that others may write to."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = self.dir.stat()
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.dir, 0o700)
        elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PkiError(f"{self.dir} is writable by other users; make it 0700")
        (self.dir / PUBLISHED_DIR).mkdir(exist_ok=True, mode=0o700)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.ensure_dir()
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- CA ----------------------------------------------------------------------------------

    def has_ca(self) -> bool:
        return self.ca_cert_path.is_file()

    def ca_key_available(self) -> bool:
        return os.access(self.ca_key_path, os.R_OK)

    def init_ca(self, *, force: bool = False) -> bool:
        """Create the mesh CA unless one exists (`force`: a new one). True when created.

        A user's own CA (MESH_CA_CERT_FILE) is never overwritten.
        """
        with self._locked():
            if self.has_ca() and not force:
                self._check_kept_ca()
                return False
            if force and self.security.ca_cert_file:
                raise PkiError("refusing to replace your own CA (MESH_CA_CERT_FILE)")
            ca = create_ca(self.trust_domain, CA_LIFETIME)
            write_atomically(self.ca_key_path, ca.key_pem, 0o600)
            write_atomically(self.ca_cert_path, ca.cert_pem, 0o644)
            return True

    def _check_kept_ca(self) -> None:
        """Refuse to keep a CA that cannot be one: a corrupt or truncated file, a leaf
        written over it, a key that is not its own (`pki init` said "kept the mesh CA"
        of any of those until 7 Dec 2026, and every certificate issued from it failed
        later). The key is checked only when readable: your own CA may come without it.
        Limits: expiry is not checked (`meshctl pki show` says it)."""
        fix = "move it away and run `meshctl pki init` for a new CA, then `meshctl pki rotate`"
        try:
            info = describe(self.ca_cert_path.read_bytes())
        except (OSError, PkiError) as exc:
            raise PkiError(f"the mesh CA {self.ca_cert_path} is unreadable ({exc}): {fix}") from exc
        if not info.is_ca:
            raise PkiError(f"the mesh CA {self.ca_cert_path} is not a CA certificate: {fix}")
        if self.ca_key_available():
            try:
                check_pair(KeyPair(self.ca_cert_path.read_bytes(), self.ca_key_path.read_bytes()))
            except PkiError as exc:
                raise PkiError(f"the mesh CA key {self.ca_key_path}: {exc}: {fix}") from None

    def ensure_service_secret(self) -> bool:
        """Write a random shared secret (0600) unless there is one; True when created.

        Instances that share this directory (compose's `pki` volume) then sign what they
        hand out — page tokens — with the same keys, so a token from one instance is
        valid on another. It is never printed."""
        path = self.dir / SERVICE_SECRET_FILE
        self.ensure_dir()
        with self._locked():
            if path.is_file():
                return False
            write_atomically(path, secrets.token_urlsafe(32).encode(), 0o600)
            return True

    def ca_bundle(self) -> bytes:
        """The trusted CA certificate(s), PEM."""
        try:
            return self.ca_cert_path.read_bytes()
        except FileNotFoundError:
            raise PkiError(
                f"no mesh CA at {self.ca_cert_path}: run `meshctl pki init` "
                "(`meshctl up` does) or name your own CA with MESH_CA_CERT_FILE"
            ) from None

    def load_ca(self) -> KeyPair:
        """The CA with its key (needed to issue)."""
        cert = self.ca_bundle()
        try:
            key = self.ca_key_path.read_bytes()
        except OSError as exc:
            raise PkiError(
                f"cannot read the CA key {self.ca_key_path} ({exc.strerror}): "
                "issuing needs it (MESH_CA_KEY_FILE)"
            ) from None
        pair = KeyPair(cert, key)
        try:
            check_pair(pair)
        except PkiError as exc:  # which files: the message alone did not say
            raise PkiError(f"the mesh CA {self.ca_cert_path} / {self.ca_key_path}: {exc}") from None
        return pair

    # -- identities -------------------------------------------------------------------------

    def issue(
        self,
        name: str,
        *,
        lifetime: dt.timedelta | None = None,
        extra_dns: Sequence[str] = (),
        extra_ips: Sequence[str] = (),
        write: bool = True,
    ) -> KeyPair:
        """A new certificate and key for `name` from the CA, written unless `write` is False."""
        pair = issue(
            self.load_ca(),
            name,
            self.trust_domain,
            lifetime or self.lifetime,
            extra_dns=extra_dns,
            extra_ips=extra_ips,
        )
        if write:
            self.save(name, pair)
        return pair

    def save(self, name: str, pair: KeyPair) -> None:
        """Key first, then certificate (a reader keyed on the certificate sees a matching
        key), then the pair published (`published/<name>`: the module doc). Refuses a
        name whose files are the CA's (your own CA kept in this directory as `<name>.crt`;
        `ca` itself is refused by `pki.check_identity`)."""
        ca_files = {self.ca_cert_path.resolve(), self.ca_key_path.resolve()}
        if {self.cert_path(name).resolve(), self.key_path(name).resolve()} & ca_files:
            raise PkiError(f"identity {name!r} would overwrite the CA's files {self.ca_cert_path}")
        self.ensure_dir()
        write_atomically(self.key_path(name), pair.key_pem, 0o600)
        write_atomically(self.cert_path(name), pair.cert_pem, 0o644)
        serial = f"{pair.certificate.serial_number:x}\n".encode()
        write_atomically(self.dir / PUBLISHED_DIR / name, serial, 0o644)

    def load(self, name: str) -> KeyPair:
        try:
            pair = KeyPair(self.cert_path(name).read_bytes(), self.key_path(name).read_bytes())
        except OSError as exc:
            raise PkiError(
                f"no certificate for {name!r} in {self.dir} ({exc.strerror}): "
                f"run `meshctl pki issue {name}`"
            ) from None
        check_pair(pair)
        return pair

    def names(self) -> list[str]:
        """Identities with a certificate in the directory (the CA's own files excluded)."""
        if not self.dir.is_dir():
            return []
        return sorted(
            p.stem
            for p in self.dir.glob("*.crt")
            if p.resolve() != self.ca_cert_path.resolve() and self.key_path(p.stem).is_file()
        )

    def rotate(self) -> list[str]:
        """Re-issue every identity in the directory (same names and extra SANs); the names."""
        rotated = []
        for name in self.names():
            info = describe(self.cert_path(name).read_bytes())
            own = f"{name}.{self.trust_domain}"
            self.issue(
                name,
                extra_dns=[d for d in info.dns_names if d != own],
                extra_ips=list(info.ip_addresses),
            )
            rotated.append(name)
        return rotated
