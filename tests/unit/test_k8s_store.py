"""The fake cluster's store keeps the API server's rules the adapter relies on (selectors, patches, versions)."""

from __future__ import annotations

import pytest

from upgate.fixtures.k8s.store import ApiError, Store, json_patch, label_match, merge_patch, selector_match


def test_label_selectors_equality_sets_and_existence() -> None:
    labels = {"app": "web", "version": "blue"}
    assert label_match("app=web,version=blue", labels)
    assert not label_match("app=web,version=green", labels)
    assert label_match("version in (blue, green),app!=db", labels)
    assert not label_match("version notin (blue)", labels)
    assert label_match("app,!tier", labels)
    assert not label_match("tier", labels)


def test_label_selector_objects() -> None:
    selector = {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "version", "operator": "In",
                                                                     "values": ["blue"]}]}
    assert selector_match(selector, {"app": "web", "version": "blue"})
    assert not selector_match(selector, {"app": "web", "version": "green"})


def test_merge_patch_removes_with_null_and_strategic_merges_named_lists() -> None:
    target = {"spec": {"selector": {"app": "web", "version": "blue"}, "unschedulable": True,
                       "containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}}
    patched = merge_patch(target, {"spec": {"selector": {"version": "green"}, "unschedulable": None,
                                            "containers": [{"name": "b", "image": "y:2"}]}}, strategic=True)
    assert patched["spec"]["selector"] == {"app": "web", "version": "green"}
    assert "unschedulable" not in patched["spec"]
    assert patched["spec"]["containers"] == [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:2"}]
    plain = merge_patch(target, {"spec": {"containers": [{"name": "b", "image": "y:2"}]}})
    assert plain["spec"]["containers"] == [{"name": "b", "image": "y:2"}]


def test_json_patch_replace_and_test() -> None:
    doc = {"spec": {"replicas": 2}}
    assert json_patch(doc, [{"op": "replace", "path": "/spec/replicas", "value": 0}])["spec"]["replicas"] == 0
    with pytest.raises(ApiError):
        json_patch(doc, [{"op": "test", "path": "/spec/replicas", "value": 3}])


def test_generation_moves_with_spec_only_and_stale_writes_conflict() -> None:
    store = Store()
    created = store.create("deployments", "default", {"metadata": {"name": "web"}, "spec": {"replicas": 1}})
    assert created["metadata"]["generation"] == 1
    status = store.write("deployments", {**created, "status": {"replicas": 1}}, status_only=True)
    assert status["metadata"]["generation"] == 1 and status["status"] == {"replicas": 1}
    changed = store.write("deployments", {**status, "spec": {"replicas": 3}})
    assert changed["metadata"]["generation"] == 2 and changed["status"] == {"replicas": 1}
    with pytest.raises(ApiError) as stale:
        store.write("deployments", {**created, "spec": {"replicas": 5}}, expect_rv=created["metadata"]["resourceVersion"])
    assert stale.value.code == 409


def test_pods_are_deleted_gracefully() -> None:
    store = Store()
    store.create("pods", "default", {"metadata": {"name": "p"}, "spec": {}})
    marked = store.delete("pods", "default", "p")
    assert "deletionTimestamp" in marked["metadata"]
    assert store.find("pods", "default", "p") is not None
    store.delete("pods", "default", "p", grace=False)
    assert store.find("pods", "default", "p") is None
