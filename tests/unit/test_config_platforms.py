"""`[deploy]` for docker, compose and kubernetes, `[kubernetes]` and `[node_upgrade]`: what each kind needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgate.config import load_config
from upgate.errors import ConfigError

HEAD = '[target]\nname = "svc"\n\n[app]\nbase_url = "http://127.0.0.1:8080"\n\n'


def load(tmp_path: Path, body: str):
    path = tmp_path / "upgate.toml"
    path.write_text(HEAD + body)
    return load_config(path, environ={})


def test_docker_needs_the_live_container(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="deploy.container"):
        load(tmp_path, '[deploy]\nkind = "docker"\nimage = "app:v2"\n')
    cfg = load(tmp_path, '[deploy]\nkind = "docker"\nimage = "app:v2"\ncontainer = "app"\n')
    assert (cfg.deploy.kind, cfg.deploy.preview_port, cfg.deploy.preview_host) == ("docker", 0, "127.0.0.1")


def test_compose_files_resolve_against_the_config(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[deploy]\nkind = "compose"\nimage = "app:v2"\ncontainer = "web"\n'
                         'compose_files = ["compose.yaml"]\n')
    assert cfg.deploy.compose_files == [tmp_path / "compose.yaml"]


def test_kubernetes_needs_its_section_and_blue_green_a_preview(tmp_path: Path) -> None:
    deploy = '[deploy]\nkind = "kubernetes"\nstrategy = "blue-green"\nimage = "app:v2"\n'
    with pytest.raises(ConfigError, match=r"needs a \[kubernetes\] section"):
        load(tmp_path, deploy)
    with pytest.raises(ConfigError, match="kubernetes.preview_service, kubernetes.preview_url"):
        load(tmp_path, deploy + '\n[kubernetes]\nservice = "app"\n')
    cfg = load(tmp_path, deploy + '\n[kubernetes]\nservice = "app"\npreview_service = "app-preview"\n'
                                  'preview_url = "http://127.0.0.1:8081"\nkubeconfig = "kube/config"\n')
    assert cfg.kubernetes.kubeconfig == tmp_path / "kube" / "config"
    assert cfg.gated_components()["kubernetes"]


def test_rolling_needs_the_deployment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kubernetes.deployment"):
        load(tmp_path, '[deploy]\nkind = "kubernetes"\nimage = "app:v2"\n\n[kubernetes]\nservice = "app"\n')


def test_node_upgrade_needs_kubernetes_and_names_unknown_keys(tmp_path: Path) -> None:
    node = '[node_upgrade]\nnode = "n1"\ncommand = ["true"]\n'
    with pytest.raises(ConfigError, match=r"\[node_upgrade\] needs a \[kubernetes\] section"):
        load(tmp_path, node)
    with pytest.raises(ConfigError, match="unknown key 'node_upgrade.drain'"):
        load(tmp_path, node + 'drain = 1\n\n[kubernetes]\n')
    assert load(tmp_path, node + '\n[kubernetes]\n').node_upgrade.drain_timeout_s == 120
