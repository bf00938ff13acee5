"""IaC checks for `make test`: the rendered SAM templates through cfn-lint, and the
rendered Kubernetes objects through kubernetes-validate (strict).

Knative Services are custom resources that kubernetes-validate has no schema for, so each
Service's revision template is also checked as what it becomes on a node: a core/v1 Pod
(the Knative-only fields containerConcurrency and timeoutSeconds set aside).
The Service's own fields are checked by thaw-deploy's Rust tests.

usage: check.py <venv bin dir> <rendered dir>
"""
import json
import pathlib
import subprocess
import sys
import tempfile

KNATIVE_ONLY = {"containerConcurrency", "timeoutSeconds"}


def main() -> int:
    bin_dir, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    templates = sorted(out.glob("aws-sam/*/template.json"))
    if not templates:
        print("no SAM templates rendered", file=sys.stderr)
        return 1
    lint = subprocess.run([bin_dir / "cfn-lint", *map(str, templates)])
    print(f"cfn-lint: {len(templates)} template(s), exit {lint.returncode}")
    objects = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(out.glob("knative/*/*.json")):
            obj = json.loads(path.read_text())
            if obj.get("kind") == "Service" and obj.get("apiVersion", "").startswith("serving.knative.dev/"):
                spec = {k: v for k, v in obj["spec"]["template"]["spec"].items() if k not in KNATIVE_ONLY}
                pod = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"]},
                       "spec": spec}
                pod_path = pathlib.Path(tmp) / f"{path.parent.name}-{path.stem}-pod.json"
                pod_path.write_text(json.dumps(pod))
                objects.append(pod_path)
            else:
                objects.append(path)
        if not objects:
            print("no Kubernetes objects rendered", file=sys.stderr)
            return 1
        kv = subprocess.run([bin_dir / "kubernetes-validate", "--strict", "--quiet", *map(str, objects)])
        print(f"kubernetes-validate --strict: {len(objects)} object(s), exit {kv.returncode}")
    return 1 if lint.returncode or kv.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
