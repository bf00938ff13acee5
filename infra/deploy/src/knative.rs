//! Knative: one `serving.knative.dev/v1` Service per function and region, in a namespace
//! named after the app.
//!
//! | manifest | Knative |
//! |---|---|
//! | min_containers, max_containers | `autoscaling.knative.dev/min-scale`, `max-scale` |
//! | idle_timeout | `autoscaling.knative.dev/scale-to-zero-pod-retention-period` |
//! | concurrency | `containerConcurrency` (and the autoscaler's `target`) |
//! | timeout | `timeoutSeconds` |
//! | memory | memory request and limit |
//! | cpu = 0.5 | cpu request and limit (`"500m"`; whole cores as `"2"`) |
//! | tmp | `ephemeral-storage` limit |
//! | gpu = "L4" | `nvidia.com/gpu: 1` limit, node selector `nvidia.com/gpu.product` |
//!
//! `network` renders nothing: a Knative pod can always open outbound connections, so
//! `none` is not enforced there. `pids` renders nothing either (Kubernetes sets the pid
//! limit per node), and `volumes` cannot be rendered: each function with volumes gets a
//! warning.
//!
//! The container runs `thaw serve --single <function>` on port 8080, with `/healthz` as
//! its readiness probe: ready once the function has loaded its model.
//!
//! Tokens come from the Secret [`TOKEN_SECRET`] in the app's namespace, never from the
//! rendered files: `THAW_TOKEN` from its key `control-token` (thaw refuses to listen on
//! 0.0.0.0 without one; it guards `/metrics` and opens every function), and, for a
//! function with `url.auth = "token"`, `THAW_URL_TOKEN` from its key `url-token`. Create
//! it before applying the Services:
//!
//! ```sh
//! kubectl -n <app> create secret generic thaw-tokens \
//!   --from-literal=control-token="$(openssl rand -hex 32)" \
//!   --from-literal=url-token="$(openssl rand -hex 32)"
//! ```

use serde_json::{json, Map, Value};
use thaw_manifest::{FunctionPlan, Plan, UrlAuth};

use crate::{json_text, stacks, volume_warnings, File, RenderOptions, Rendered};

/// The container port `thaw serve --single` listens on.
pub const PORT: u16 = 8080;

/// The Secret, in the app's namespace, that holds the tokens.
pub const TOKEN_SECRET: &str = "thaw-tokens";

/// The container's environment: the manifest's `env`, then the tokens by reference.
fn container_env(f: &FunctionPlan) -> Vec<Value> {
    let secret = |name: &str, key: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": TOKEN_SECRET, "key": key}}});
    let mut env: Vec<Value> = f
        .spec
        .env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    env.push(secret("THAW_TOKEN", "control-token"));
    if f.spec.url.auth == UrlAuth::Token {
        env.push(secret("THAW_URL_TOKEN", "url-token"));
    }
    env
}

/// A DNS-1123 label from any name.
pub fn dns_label(name: &str) -> String {
    let s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.trim_matches('-').chars().take(63).collect()
}

/// The image of a function.
pub fn image(plan: &Plan, f: &FunctionPlan, opts: &RenderOptions) -> String {
    format!(
        "{}/{}-{}:{}",
        opts.registry.trim_end_matches('/'),
        dns_label(&plan.app),
        f.name,
        opts.tag
    )
}

/// A CPU quantity from cores: whole cores as `"2"`, else millicores (`"500m"`, at least 1m).
pub fn cpu_quantity(cores: f64) -> String {
    let milli = (cores * 1000.0).round().max(1.0) as u64;
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

/// Renders the namespace and the Services of each region.
pub fn render(plan: &Plan, opts: &RenderOptions) -> Rendered {
    let mut out = Rendered::default();
    volume_warnings(plan.functions.values(), &mut out.warnings);
    let namespace = dns_label(&plan.app);
    for (region, functions) in stacks(plan) {
        out.files.push(File {
            path: format!("knative/{region}/namespace.json").into(),
            text: json_text(&json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": namespace}},
            })),
        });
        for f in functions {
            out.files.push(File {
                path: format!("knative/{region}/{}.json", f.name).into(),
                text: json_text(&service(plan, f, &namespace, opts)),
            });
        }
    }
    out
}

/// One function's Service.
pub fn service(plan: &Plan, f: &FunctionPlan, namespace: &str, opts: &RenderOptions) -> Value {
    let spec = &f.spec;
    let memory = format!("{}Mi", (spec.memory.0 / (1024 * 1024)).max(1));
    let mut requests = Map::new();
    let mut limits = Map::new();
    requests.insert("memory".into(), json!(memory));
    limits.insert("memory".into(), json!(memory));
    if let Some(cores) = spec.cpu {
        requests.insert("cpu".into(), json!(cpu_quantity(cores)));
        limits.insert("cpu".into(), json!(cpu_quantity(cores)));
    }
    limits.insert(
        "ephemeral-storage".into(),
        json!(format!("{}Mi", spec.tmp.mebibytes().max(1))),
    );
    let mut pod = json!({
        "containerConcurrency": spec.concurrency,
        "timeoutSeconds": spec.timeout.0.as_secs().max(1),
        "containers": [{
            "name": "function",
            "image": image(plan, f, opts),
            "ports": [{"name": "http1", "containerPort": PORT}],
            "env": container_env(f),
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": PORT}, "periodSeconds": 1},
            "resources": {"requests": {}, "limits": {}},
        }],
    });
    if let Some(kind) = &spec.gpu.kind {
        limits.insert("nvidia.com/gpu".into(), json!(spec.gpu.count.to_string()));
        pod["nodeSelector"] = json!({"nvidia.com/gpu.product": kind.node_product()});
    }
    pod["containers"][0]["resources"]["requests"] = Value::Object(requests);
    pod["containers"][0]["resources"]["limits"] = Value::Object(limits);
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": f.name.as_str(),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": namespace, "app.kubernetes.io/name": f.name.as_str()},
        },
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        "autoscaling.knative.dev/min-scale": spec.min_containers.to_string(),
                        "autoscaling.knative.dev/max-scale": spec.max_containers.to_string(),
                        "autoscaling.knative.dev/target": spec.concurrency.to_string(),
                        "autoscaling.knative.dev/scale-to-zero-pod-retention-period":
                            format!("{}s", spec.idle_timeout.0.as_secs().max(1)),
                    }
                },
                "spec": pod,
            }
        }
    })
}
