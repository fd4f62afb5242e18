"""A real IMAP server for tests: Debian's dovecot (package dovecot-imapd), run in the foreground.

    with Dovecot.start(tmp_path) as server:
        server.append(b"raw message")               # APPEND over IMAPS, as a mail server would
        url = server.url("INBOX")                    # imaps://bounces:...@127.0.0.1:PORT/INBOX
        poll(settings, engine, ssl_context=server.client_context())

It listens on 127.0.0.1 and a free port, IMAPS only (a CA and a server certificate made by
cryptography for the test), one user in a passwd-file, maildir storage. Its files live in a
directory of their own under the system temp dir (not tmp_path: dovecot's unprivileged
processes, and the mail user, which dovecot refuses to be root, must reach them, and pytest
keeps tmp_path's parents private); the log is copied to tmp_path and printed when startup
fails.

When dovecot is not installed the tests that need it are skipped, except with CI=true, where
they fail (.ci/run installs dovecot-imapd).
"""

from __future__ import annotations

import datetime as dt
import imaplib
import ipaddress
import os
import pwd
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers import free_ports

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
USER = "bounces"
PASSWORD = "s3cret@p/ss%w rd"  # characters that must be percent-encoded in the URL
START_TIMEOUT = 20.0


def dovecot_binary() -> str:
    """The dovecot executable, else skip (fail with CI=true)."""
    found = shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.access(p, os.X_OK)),
        None)
    if found is None:
        message = "dovecot is not installed (Debian: apt-get install dovecot-imapd)"
        if IN_CI:
            pytest.fail(f"{message}, and CI=true", pytrace=False)
        pytest.skip(message)
    return found


def free_port() -> int:
    return free_ports(1)[0]


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1/localhost signed by it: (ca, cert, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Consentry test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@dataclass
class Dovecot:
    process: subprocess.Popen[bytes]
    home: Path
    port: int
    ca: Path
    log: Path
    keep_log: Path | None = None
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    @contextmanager
    def start(cls, tmp_path: Path, *, without_move: bool = False) -> Iterator[Dovecot]:
        """Run dovecot for the with-block. without_move: a server that does not announce MOVE
        (so that clients fall back to COPY, \\Deleted, EXPUNGE)."""
        binary = dovecot_binary()
        home = Path(tempfile.mkdtemp(prefix="consentry-dovecot-"))
        server: Dovecot | None = None
        try:
            server = cls._launch(binary, home, tmp_path, without_move)
            yield server
        finally:
            if server is not None:
                server.stop()
            shutil.rmtree(home, ignore_errors=True)

    @classmethod
    def _launch(cls, binary: str, home: Path, tmp_path: Path, without_move: bool) -> Dovecot:
        home.chmod(0o755)  # dovecot's own users (auth, login) must reach their files
        ca, cert, key = _certificates(home)
        key.chmod(0o600)  # read by dovecot's config process (root), not by the others
        for name in ("run", "state", "mail"):
            (home / name).mkdir()
        if os.geteuid() == 0:
            # dovecot never lets the mail processes run as root: mail belongs to nobody.
            nobody = pwd.getpwnam("nobody")
            mail_uid, mail_gid = nobody.pw_uid, nobody.pw_gid
            os.chown(home / "mail", mail_uid, mail_gid)
            users = ""
        else:
            # Unprivileged: every dovecot process runs as the current user.
            me = pwd.getpwuid(os.geteuid())
            mail_uid, mail_gid = me.pw_uid, me.pw_gid
            users = (f"default_internal_user = {me.pw_name}\n"
                     f"default_login_user = {me.pw_name}\n"
                     f"default_internal_group = {me.pw_gid}\n")
        passwd = home / "passwd"
        passwd.write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        passwd.chmod(0o644)
        port = free_port()
        log = home / "dovecot.log"
        capability = ("imap_capability = IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE "
                      "IDLE SORT THREAD=REFERENCES MULTIAPPEND UNSELECT CHILDREN NAMESPACE "
                      "UIDPLUS LIST-EXTENDED I18NLEVEL=1 ESEARCH SEARCHRES\n"
                      if without_move else "")
        config = home / "dovecot.conf"
        config.write_text(f"""\
base_dir = {home}/run
state_dir = {home}/state
log_path = {log}
{users}protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain
first_valid_uid = {mail_uid}
first_valid_gid = {mail_gid}
{capability}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
  default_fields = uid={mail_uid} gid={mail_gid} home={home}/mail/%u
}}
mail_location = maildir:{home}/mail/%u
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
""")
        stdout = (home / "stdout.txt").open("wb")
        try:
            process = subprocess.Popen([binary, "-F", "-c", str(config)], stdout=stdout,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            stdout.close()
        server = cls(process, home, port, ca, log, keep_log=tmp_path / "dovecot.log")
        try:
            server._wait_until_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def _output(self) -> str:
        text = []
        for path in (self.home / "stdout.txt", self.log):
            if path.exists():
                text.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(text)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"dovecot exited with {self.process.returncode} on startup:\n"
                            f"{self._output()}", pytrace=False)
            try:
                with self.connect() as client:
                    client.noop()
                return
            except (OSError, imaplib.IMAP4.error):
                if time.monotonic() > deadline:
                    pytest.fail(f"dovecot did not answer on port {self.port} within "
                                f"{START_TIMEOUT:g} s:\n{self._output()}", pytrace=False)
                time.sleep(0.1)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.keep_log is not None and self.log.exists():
            shutil.copyfile(self.log, self.keep_log)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's CA (and verifies as in production)."""
        return ssl.create_default_context(cafile=str(self.ca))

    def url(self, folder: str = "INBOX") -> str:
        return (f"imaps://{quote(USER, safe='')}:{quote(PASSWORD, safe='')}@127.0.0.1:"
                f"{self.port}/{quote(folder)}")

    @contextmanager
    def connect(self) -> Iterator[imaplib.IMAP4_SSL]:
        """A logged-in client."""
        client = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=self.client_context(),
                                   timeout=10)
        try:
            client.login(USER, PASSWORD)
            yield client
        finally:
            try:
                client.logout()
            except (OSError, imaplib.IMAP4.error):
                client.shutdown()

    def append(self, *messages: bytes, folder: str = "INBOX") -> None:
        """Deliver messages by IMAP APPEND."""
        with self.connect() as client:
            for raw in messages:
                typ, data = client.append(f'"{folder}"', None, None, raw)
                assert typ == "OK", data

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        """The raw messages in a folder (empty when the folder does not exist)."""
        with self.connect() as client:
            typ, _ = client.select(f'"{folder}"', readonly=True)
            if typ != "OK":
                return []
            typ, data = client.uid("SEARCH", None, "ALL")
            uids = data[0].split() if data and data[0] else []
            found = []
            for uid in uids:
                typ, data = client.uid("FETCH", uid, "(BODY.PEEK[])")
                found.extend(bytes(p[1]) for p in data if isinstance(p, tuple))
            return found
