"""Each DNS provider's credentials file, certbot flags and renewal unit, rendered by Ansible."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "ansible" / "roles" / "certbot"
SETTINGS = REPO / "ansible" / "roles" / "detector" / "defaults" / "main.yml"
BIN = Path(sys.executable).parent
CERTBOT = "/opt/certbot/bin/certbot"
LE = "/etc/letsencrypt"
GOOGLE_KEY = {
    "type": "service_account",
    "project_id": "detector-dns",
    "private_key_id": "0123abcd",
    "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----\n",
    "client_email": "certbot@detector-dns.iam.gserviceaccount.com",
    "token_uri": "https://oauth2.googleapis.com/token",
}
# The vault mapping each provider gets (rfc2136 takes the TSIG settings instead).
CREDENTIALS = {
    "rfc2136": {},
    "cloudflare": {"dns_cloudflare_api_token": "cf-token-0123"},
    "digitalocean": {"dns_digitalocean_token": "do-token-4567"},
    "google": GOOGLE_KEY,
    "route53": {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "aws/secret+89"},
}
# Flags each plugin accepts, as `certbot --help dns-<provider>` of certbot 5.8.0 lists them.
FLAGS = {
    "rfc2136": ["--dns-rfc2136-credentials", f"{LE}/detector-dns-rfc2136.ini"],
    "cloudflare": ["--dns-cloudflare-credentials", f"{LE}/detector-dns-cloudflare.ini"],
    "digitalocean": ["--dns-digitalocean-credentials", f"{LE}/detector-dns-digitalocean.ini"],
    "google": ["--dns-google-credentials", f"{LE}/detector-dns-google.json"],
    "route53": [],
}
# Cases whose credentials miss what the plugin reads: the role's own check must stop them.
BAD = {
    "cloudflare-empty": ("cloudflare", {}, "dns_cloudflare_api_token or dns_cloudflare_email"),
    "route53-no-secret": ("route53", {"aws_access_key_id": "AKIA"}, "aws_secret_access_key"),
    "google-ini-keys": ("google", {"dns_google_token": "x"}, "client_email"),
    "digitalocean-blank": ("digitalocean", {"dns_digitalocean_token": ""}, "dns_digitalocean"),
}


def _role_vars(provider: str, credentials) -> dict:
    """The certbot_* values each case sets (over the role defaults' detector_* settings)."""
    return {
        "certbot_mode": "dns",
        "certbot_dns_provider": provider,
        "certbot_email": "admin@example.com",
        "certbot_cert_name": "detector.example.com",
        "certbot_domains": ["detector.example.com", "www.detector.example.com"],
        "certbot_acme_server": "https://acme-v02.api.letsencrypt.org/directory",
        "certbot_acme_ca_bundle": "",
        "certbot_dns_credentials": credentials,
        "certbot_rfc2136_server": "198.51.100.53",
        "certbot_rfc2136_port": 53,
        "certbot_rfc2136_key_name": "detector-acme",
        "certbot_rfc2136_key_secret": "c2VjcmV0LXRzaWc=",
        "certbot_rfc2136_key_algorithm": "hmac-sha256",
        "certbot_propagation_seconds": 30,
        "certbot_tls_dir": "/etc/ssl/detector",
        "_certbot_bin": CERTBOT,
    }


def _inventory(out: Path) -> dict:
    """One local host per case, its certbot_* values as host vars (all run in parallel)."""
    cases = {p: (p, c) for p, c in CREDENTIALS.items()}
    cases["google-json-text"] = ("google", json.dumps(GOOGLE_KEY, indent=2))
    cases.update({name: (provider, creds) for name, (provider, creds, _) in BAD.items()})
    hosts = {}
    settings = yaml.safe_load(SETTINGS.read_text())
    for name, (provider, credentials) in cases.items():
        (out / name).mkdir()
        hosts[name] = {
            **settings,  # the detector_* defaults the rest of the role derives from
            **_role_vars(provider, credentials),
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "out": str(out / name),
            "render": name not in BAD,
        }
    return {"all": {"hosts": hosts}}


def _play() -> list[dict]:
    """configure.yml in check mode (a failure's message lands in <out>/fail), then the files."""
    configure = {
        "name": "Run the role's configure tasks in check mode",
        "check_mode": True,
        "block": [
            {
                "name": "Include configure.yml",
                "ansible.builtin.include_role": {
                    "name": "certbot",
                    "tasks_from": "configure",
                    "public": True,  # its defaults and vars stay for the render tasks
                },
                "vars": {
                    "certbot_credentials_file": "{{ out }}/check-credentials",
                    "certbot_deploy_hook": "{{ out }}/check-hook",
                },
            }
        ],
        "rescue": [
            {
                "name": "Record the failure",
                "ansible.builtin.copy": {
                    "content": "{{ ansible_failed_result.msg }}",
                    "dest": "{{ out }}/fail",
                    "mode": "0600",
                },
                "check_mode": False,
            }
        ],
    }
    render = [
        {
            "name": f"Render {template}",
            "ansible.builtin.template": {
                "src": str(ROLE / "templates" / template),
                "dest": "{{ out }}/" + dest,
                "mode": "0600",
            },
        }
        for template, dest in [("dns-credentials.j2", "credentials"), ("renew.service.j2", "unit")]
    ]
    render.append(
        {
            "name": "Write the certonly argv and environment",
            "ansible.builtin.copy": {
                "content": "{{ {'argv': _certbot_certonly_argv, "
                "'env': _certbot_credentials_env, 'file': certbot_credentials_file} | to_json }}",
                "dest": "{{ out }}/argv.json",
                "mode": "0600",
            },
        }
    )
    tasks = [configure, {"name": "Render", "block": render, "when": "render"}]
    return [{"name": "Render", "hosts": "all", "gather_facts": False, "tasks": tasks}]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """Run one playbook rendering every provider's files and checking the bad cases."""
    playbook = BIN / "ansible-playbook"
    if not playbook.exists():
        pytest.skip(f"ansible-playbook is not installed in {BIN}; run `make setup`")
    out = tmp_path_factory.mktemp("certbot")
    (out / "hosts.yml").write_text(yaml.safe_dump(_inventory(out)))
    (out / "play.yml").write_text(yaml.safe_dump(_play(), sort_keys=False))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROLE.parent),
        "ANSIBLE_LOCAL_TEMP": str(out / ".tmp"),
        "ANSIBLE_FORKS": str(len(CREDENTIALS) + 1 + len(BAD)),
    }
    result = subprocess.run(
        [str(playbook), "-i", str(out / "hosts.yml"), str(out / "play.yml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _certbot_ini(path: Path, provider: str):
    """Read the file as the plugin does: certbot's CredentialsConfiguration, dns_<p>_ keys."""
    dns_common = pytest.importorskip("certbot.plugins.dns_common")
    return dns_common.CredentialsConfiguration(
        str(path), lambda key: f"dns_{provider}_" + key.replace("-", "_")
    )


def test_rfc2136_file_is_read_by_certbot_from_the_tsig_settings(rendered: Path):
    conf = _certbot_ini(rendered / "rfc2136" / "credentials", "rfc2136")
    assert conf.conf("server") == "198.51.100.53" and conf.conf("port") == "53"
    assert conf.conf("name") == "detector-acme" and conf.conf("secret") == "c2VjcmV0LXRzaWc="
    assert conf.conf("algorithm") == "HMAC-SHA256"


@pytest.mark.parametrize(
    "provider,key,value",
    [
        ("cloudflare", "api-token", "cf-token-0123"),
        ("digitalocean", "token", "do-token-4567"),
    ],
)
def test_token_providers_get_the_ini_key_their_plugin_reads(rendered, provider, key, value):
    assert _certbot_ini(rendered / provider / "credentials", provider).conf(key) == value


def test_route53_gets_an_aws_shared_credentials_file(rendered: Path):
    """boto3 reads profile [default] of the file named by AWS_SHARED_CREDENTIALS_FILE."""
    parser = configparser.RawConfigParser()  # what botocore's configloader uses
    parser.read(rendered / "route53" / "credentials")
    assert dict(parser["default"]) == CREDENTIALS["route53"]
    out = json.loads((rendered / "route53" / "argv.json").read_text())
    assert out["env"] == {"AWS_SHARED_CREDENTIALS_FILE": f"{LE}/detector-dns-route53.ini"}
    unit = (rendered / "route53" / "unit").read_text()
    assert f"Environment=AWS_SHARED_CREDENTIALS_FILE={LE}/detector-dns-route53.ini" in unit
    assert "ProtectHome=yes" in unit and not out["file"].startswith(("/root", "/home"))


@pytest.mark.parametrize("case", ["google", "google-json-text"])
def test_google_gets_the_service_account_json_file(rendered: Path, case: str):
    assert json.loads((rendered / case / "credentials").read_text()) == GOOGLE_KEY


@pytest.mark.parametrize("provider", sorted(CREDENTIALS))
def test_certonly_command_line_per_provider(rendered: Path, provider: str):
    out = json.loads((rendered / provider / "argv.json").read_text())
    assert out["argv"] == [
        CERTBOT,
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--email",
        "admin@example.com",
        "--server",
        "https://acme-v02.api.letsencrypt.org/directory",
        "--cert-name",
        "detector.example.com",
        "--expand",
        "--deploy-hook",
        "/usr/local/sbin/detector-cert-deploy",
        f"--dns-{provider}",
        *FLAGS[provider],
        *([] if provider == "route53" else [f"--dns-{provider}-propagation-seconds", "30"]),
    ]
    if provider != "route53":
        assert out["file"] == FLAGS[provider][1] and out["env"] == {}
        assert "AWS_" not in (rendered / provider / "unit").read_text()
    assert not (rendered / provider / "fail").exists()


def test_rfc2136_flags_are_accepted_by_the_installed_certbot():
    """The plugin installed here (certbot-dns-rfc2136) lists every flag the role passes it."""
    certbot = BIN / "certbot"
    if not certbot.exists():
        pytest.skip(f"certbot is not installed in {BIN}; run `make setup`")
    result = subprocess.run(
        [str(certbot), "--help", "dns-rfc2136"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--dns-rfc2136-credentials" in result.stdout
    assert "--dns-rfc2136-propagation-seconds" in result.stdout


@pytest.mark.parametrize("case", sorted(BAD))
def test_missing_credentials_stop_before_certbot_runs(rendered: Path, case: str):
    _, _, missing = BAD[case]
    message = (rendered / case / "fail").read_text()
    assert missing in message and "detector_dns_credentials" in message
    for secret in ("AKIA", "dns_google_token: x"):
        assert f"'{secret}'" not in message


def test_credentials_file_task_is_root_only_and_silent():
    tasks = yaml.safe_load((ROLE / "tasks" / "configure.yml").read_text())
    templates = [t for t in tasks if "ansible.builtin.template" in t]
    task = next(
        t for t in templates if t["ansible.builtin.template"]["src"] == "dns-credentials.j2"
    )
    assert task["ansible.builtin.template"]["mode"] == "0600"
    assert task["ansible.builtin.template"]["owner"] == "root"
    assert task["no_log"] is True and task["diff"] is False
