#!/usr/bin/env python3
"""Render a kustomization of this folder without kubectl, for validation in CI.

Implements the subset of kustomize these files use: `resources` (files, or folders with a
kustomization.yaml), `labels` (added to metadata.labels), `images` (newName/newTag) and
`patches` with a JSON 6902 `patch` and a kind/name `target`. Anything else is an error, so a
manifest using more is noticed. `kubectl kustomize DIR` renders the same.

    python3 deploy/kubernetes/render.py deploy/kubernetes/overlays/gpu > gpu.yaml
"""
import copy
import os
import sys

import yaml

KNOWN = {"apiVersion", "kind", "resources", "labels", "images", "patches"}


def render(path):
    kfile = os.path.join(path, "kustomization.yaml")
    with open(kfile) as f:
        k = yaml.safe_load(f)
    unknown = set(k) - KNOWN
    if unknown:
        sys.exit(f"{kfile}: render.py does not implement {sorted(unknown)}")
    objects = []
    for resource in k.get("resources", []):
        full = os.path.normpath(os.path.join(path, resource))
        if os.path.isdir(full):
            objects.extend(render(full))
        else:
            with open(full) as f:
                objects.extend(o for o in yaml.safe_load_all(f) if o)
    for patch in k.get("patches", []):
        target = patch["target"]
        matched = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        if not matched:
            sys.exit(f"{kfile}: no {target['kind']} {target['name']} to patch")
        for o in matched:
            for op in yaml.safe_load(patch["patch"]):
                apply(o, op, kfile)
    for label in k.get("labels", []):
        for o in objects:
            o["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in k.get("images", []):
        for o in objects:
            for container in containers(o):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    name = image.get("newName", name)
                    tag = image.get("newTag", tag)
                    container["image"] = f"{name}:{tag}" if tag else name
    return objects


def containers(o):
    spec = o.get("spec", {})
    if o["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec.get("template", {}).get("spec", {}).get("containers", [])


def apply(o, op, where):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].strip("/").split("/")]
    parent = o
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    last = parts[-1]
    if isinstance(parent, list) and last == "-" and op["op"] == "add":
        parent.append(copy.deepcopy(op["value"]))
        return
    key = int(last) if isinstance(parent, list) else last
    if op["op"] in ("replace", "add"):
        if op["op"] == "replace" and (key not in parent if isinstance(parent, dict) else key >= len(parent)):
            sys.exit(f"{where}: nothing at {op['path']} to replace")
        parent[key] = copy.deepcopy(op["value"])
    elif op["op"] == "remove":
        del parent[key]
    else:
        sys.exit(f"{where}: render.py does not implement op {op['op']}")


if __name__ == "__main__":
    yaml.safe_dump_all(render(sys.argv[1]), sys.stdout, sort_keys=False)
