"""Checks the Kubernetes manifests: valid YAML, the schedule settings the runbook relies on."""
import pathlib
import sys

import yaml

here = pathlib.Path(__file__).parent
docs = {p.name: list(yaml.safe_load_all(p.read_text())) for p in here.glob("*.yaml")}
errors = []
for name, objs in docs.items():
    for o in objs:
        if o["kind"] == "CronJob":
            spec = o["spec"]
            for key, want in [("schedule", "0 5 * * *"), ("timeZone", "America/Chicago"),
                              ("concurrencyPolicy", "Forbid")]:
                if spec.get(key) != want:
                    errors.append(f"{name}: {key} is {spec.get(key)!r}, want {want!r}")
            if not spec.get("startingDeadlineSeconds"):
                errors.append(f"{name}: startingDeadlineSeconds missing")
            pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        elif o["kind"] == "Deployment":
            pod = o["spec"]["template"]["spec"]
            if o["spec"]["selector"]["matchLabels"].items() - o["spec"]["template"]["metadata"]["labels"].items():
                errors.append(f"{name}: selector does not match the pod labels")
        else:
            errors.append(f"{name}: unexpected kind {o['kind']}")
            continue
        for c in pod["containers"]:
            args = c["args"]
            if args[0] not in ("run", "producer", "scorer", "assembler") or "--config" not in args:
                errors.append(f"{name}: container {c['name']} runs {args}")
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            volumes = {v["name"] for v in pod.get("volumes", [])}
            if mounts - volumes:
                errors.append(f"{name}: mounts without volumes: {mounts - volumes}")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"{sum(len(v) for v in docs.values())} manifests OK")
