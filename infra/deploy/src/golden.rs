//! Golden tests: `golden/functions.toml` rendered for every target must equal the files
//! under `golden/<target>/`. `UPDATE_GOLDEN=1 cargo test -p thaw-deploy` rewrites them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thaw_manifest::{CudaArch, FunctionPlan, GpuKind, Manifest, Plan};

use crate::{render, RenderOptions, Target};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// The golden manifest as a Plan, with stand-in snapshot objects (no cache needed).
fn plan() -> Plan {
    let text = std::fs::read_to_string(golden_dir().join("functions.toml")).expect("manifest");
    let manifest = Manifest::parse(&text).expect("parse");
    manifest.validate().expect("valid");
    let object = |name: &str| PathBuf::from(format!("/cache/objects/{name}-0123456789abcdef"));
    let functions = manifest
        .function
        .iter()
        .map(|(name, spec)| {
            let f = FunctionPlan {
                name: name.clone(),
                binary_path: PathBuf::from("/bin").join(spec.binary.as_deref().unwrap_or("")),
                args: Vec::new(),
                workdir: None,
                read_only: Vec::new(),
                snapshot_dir: spec.snapshot.as_deref().map(object),
                snapshot_dirs: spec
                    .snapshots
                    .iter()
                    .map(|(role, s)| (role.clone(), object(s)))
                    .collect::<BTreeMap<_, _>>(),
                missing_snapshots: Vec::new(),
                template: false,
                spec: spec.clone(),
            };
            (name.clone(), f)
        })
        .collect();
    Plan {
        routes: Default::default(),
        app: manifest.app.name.clone(),
        regions: manifest.app.regions.clone(),
        functions,
    }
}

#[test]
fn every_target_matches_its_golden_files() {
    let plan = plan();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for (target, dir) in [
        (Target::AwsSam, "aws-sam"),
        (Target::Knative, "knative"),
        (Target::Docker, "docker"),
    ] {
        let rendered = render(&plan, target, &RenderOptions::default());
        assert!(!rendered.files.is_empty(), "{dir} rendered nothing");
        if update {
            let _ = std::fs::remove_dir_all(golden_dir().join(dir));
            rendered.write(&golden_dir()).expect("write goldens");
            continue;
        }
        for f in &rendered.files {
            let want = std::fs::read_to_string(golden_dir().join(&f.path)).unwrap_or_else(|e| {
                panic!("{}: {e} (UPDATE_GOLDEN=1 to create)", f.path.display())
            });
            assert_eq!(f.text, want, "golden mismatch for {}", f.path.display());
        }
    }
}

#[test]
fn sam_leaves_gpu_functions_out_and_caps_retries_with_warnings() {
    let rendered = render(&plan(), Target::AwsSam, &RenderOptions::default());
    assert!(rendered
        .warnings
        .iter()
        .any(|w| w.contains("embed-gpu") && w.contains("knative")));
    assert!(rendered.warnings.iter().any(|w| w.contains("retries = 3")));
    assert!(rendered
        .warnings
        .iter()
        .any(|w| w.starts_with("embed: batch is thaw serve's dynamic batching")));
    assert!(rendered
        .files
        .iter()
        .all(|f| !f.text.contains("EmbedGpuFunction")));
}

#[test]
fn cpu_tmp_and_volumes_render_or_warn() {
    let sam = render(&plan(), Target::AwsSam, &RenderOptions::default());
    assert!(sam
        .warnings
        .iter()
        .any(|w| w.starts_with("analyze: tmp = 20480 MiB set to 10240 MiB")));
    let volumes = |w: &Vec<String>| {
        w.iter()
            .filter(|w| w.contains("volumes are mounted by thaw serve only"))
            .map(|w| w.split(':').next().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    // Once per function, not per region.
    assert_eq!(volumes(&sam.warnings), ["analyze"]);
    let template = sam
        .files
        .iter()
        .find(|f| f.path.ends_with("us-east-1/template.json"))
        .expect("us-east-1 template");
    let v: serde_json::Value = serde_json::from_str(&template.text).expect("json");
    let props = |id: &str| v["Resources"][id]["Properties"].clone();
    assert_eq!(props("EmbedFunction")["EphemeralStorage"]["Size"], 1024);
    assert_eq!(props("AnalyzeFunction")["EphemeralStorage"]["Size"], 10_240);

    let knative = render(&plan(), Target::Knative, &RenderOptions::default());
    assert_eq!(volumes(&knative.warnings), ["analyze"]);
    let resources = |name: &str| {
        let f = knative
            .files
            .iter()
            .find(|f| f.path.ends_with(format!("us-east-1/{name}.json")))
            .expect("service");
        let v: serde_json::Value = serde_json::from_str(&f.text).expect("json");
        v["spec"]["template"]["spec"]["containers"][0]["resources"].clone()
    };
    let embed = resources("embed");
    assert_eq!(embed["requests"]["cpu"], "500m");
    assert_eq!(embed["limits"]["cpu"], "500m");
    assert_eq!(embed["limits"]["ephemeral-storage"], "1024Mi");
    let analyze = resources("analyze");
    assert_eq!(analyze["limits"]["cpu"], "2");
    assert_eq!(analyze["limits"]["ephemeral-storage"], "20480Mi");
    let gpu = resources("embed-gpu");
    assert!(gpu["limits"].get("cpu").is_none(), "no cpu unless set");
    assert_eq!(crate::knative::cpu_quantity(1.5), "1500m");
    assert_eq!(crate::knative::cpu_quantity(0.0001), "1m");
}

#[test]
fn knative_services_carry_scaling_gpu_and_probe() {
    let rendered = render(&plan(), Target::Knative, &RenderOptions::default());
    let gpu = rendered
        .files
        .iter()
        .find(|f| f.path.ends_with("us-east-1/embed-gpu.json"))
        .expect("gpu service in us-east-1");
    let v: serde_json::Value = serde_json::from_str(&gpu.text).expect("json");
    let tpl = &v["spec"]["template"];
    assert_eq!(
        tpl["metadata"]["annotations"]
            ["autoscaling.knative.dev/scale-to-zero-pod-retention-period"],
        "300s"
    );
    assert_eq!(
        tpl["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        "1"
    );
    assert_eq!(
        tpl["spec"]["nodeSelector"]["nvidia.com/gpu.product"],
        "NVIDIA-L4"
    );
    assert_eq!(tpl["spec"]["containerConcurrency"], 8);
    // Region-scoped: no GPU service in eu-west-1.
    assert!(!rendered
        .files
        .iter()
        .any(|f| f.path.ends_with("eu-west-1/embed-gpu.json")));
}

#[test]
fn tokens_are_secret_references_never_values() {
    let rendered = render(&plan(), Target::Knative, &RenderOptions::default());
    let env_of = |name: &str| -> Vec<serde_json::Value> {
        let file = rendered
            .files
            .iter()
            .find(|f| f.path.ends_with(format!("us-east-1/{name}.json")))
            .expect("service");
        let v: serde_json::Value = serde_json::from_str(&file.text).expect("json");
        v["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let reference = |env: &[serde_json::Value], var: &str| {
        env.iter()
            .find(|e| e["name"] == var)
            .map(|e| e["valueFrom"]["secretKeyRef"].clone())
    };
    // embed has url.auth = "token"; analyze does not.
    let embed = env_of("embed");
    assert_eq!(
        reference(&embed, "THAW_TOKEN"),
        Some(serde_json::json!({"name": "thaw-tokens", "key": "control-token"}))
    );
    assert_eq!(
        reference(&embed, "THAW_URL_TOKEN"),
        Some(serde_json::json!({"name": "thaw-tokens", "key": "url-token"}))
    );
    let analyze = env_of("analyze");
    assert!(reference(&analyze, "THAW_TOKEN").is_some());
    assert!(reference(&analyze, "THAW_URL_TOKEN").is_none());
    // Docker says how to pass them; SAM says what becomes of url.auth = "token".
    let docker = render(&plan(), Target::Docker, &RenderOptions::default());
    assert!(docker
        .files
        .iter()
        .all(|f| f.text.contains("-e THAW_TOKEN=<secret>")));
    let sam = render(&plan(), Target::AwsSam, &RenderOptions::default());
    assert!(sam
        .warnings
        .iter()
        .any(|w| w.starts_with("embed:") && w.contains("AWS_IAM")));
}

/// The part of Knative's `serving.knative.dev/v1` Service schema thaw renders, as types
/// that refuse unknown fields: a rendered Service that does not fit fails to parse.
// Parsing is the check; not every field is read afterwards.
#[allow(dead_code)]
mod knative_schema {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Service {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: ServiceSpec,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ObjectMeta {
        #[serde(default)]
        pub name: Option<String>,
        #[serde(default)]
        pub namespace: Option<String>,
        #[serde(default)]
        pub labels: BTreeMap<String, String>,
        #[serde(default)]
        pub annotations: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ServiceSpec {
        pub template: RevisionTemplate,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RevisionTemplate {
        pub metadata: ObjectMeta,
        pub spec: RevisionSpec,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct RevisionSpec {
        pub container_concurrency: u32,
        pub timeout_seconds: u32,
        pub containers: Vec<Container>,
        #[serde(default)]
        pub node_selector: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Container {
        pub name: String,
        pub image: String,
        pub ports: Vec<Port>,
        #[serde(default)]
        pub env: Vec<EnvVar>,
        pub readiness_probe: Probe,
        pub resources: Resources,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Port {
        pub name: String,
        pub container_port: u16,
    }

    /// A literal `value`, or a `valueFrom` Secret reference: exactly one.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct EnvVar {
        pub name: String,
        #[serde(default)]
        pub value: Option<String>,
        #[serde(default)]
        pub value_from: Option<EnvSource>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct EnvSource {
        pub secret_key_ref: SecretKeyRef,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SecretKeyRef {
        pub name: String,
        pub key: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Probe {
        pub http_get: HttpGet,
        pub period_seconds: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct HttpGet {
        pub path: String,
        pub port: u16,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Resources {
        pub requests: BTreeMap<String, String>,
        pub limits: BTreeMap<String, String>,
    }
}

#[test]
fn knative_services_fit_the_serving_v1_schema() {
    let rendered = render(&plan(), Target::Knative, &RenderOptions::default());
    let known = [
        "autoscaling.knative.dev/min-scale",
        "autoscaling.knative.dev/max-scale",
        "autoscaling.knative.dev/target",
        "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
    ];
    let dns = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    let mut services = 0;
    for f in rendered
        .files
        .iter()
        .filter(|f| !f.path.ends_with("namespace.json"))
    {
        let s: knative_schema::Service = serde_json::from_str(&f.text)
            .unwrap_or_else(|e| panic!("{}: not a Knative Service: {e}", f.path.display()));
        services += 1;
        assert_eq!(s.api_version, "serving.knative.dev/v1");
        assert_eq!(s.kind, "Service");
        assert!(
            s.metadata.name.as_deref().is_some_and(dns),
            "{:?}",
            s.metadata.name
        );
        assert!(s.metadata.namespace.as_deref().is_some_and(dns));
        let annotations = &s.spec.template.metadata.annotations;
        for (k, v) in annotations {
            assert!(known.contains(&k.as_str()), "unknown annotation {k}");
            if k.ends_with("retention-period") {
                assert!(
                    v.ends_with('s') && v[..v.len() - 1].parse::<u64>().is_ok(),
                    "{v}"
                );
            } else {
                assert!(v.parse::<u32>().is_ok(), "{k}: {v}");
            }
        }
        let min: u32 = annotations["autoscaling.knative.dev/min-scale"]
            .parse()
            .unwrap_or(u32::MAX);
        let max: u32 = annotations["autoscaling.knative.dev/max-scale"]
            .parse()
            .unwrap_or(0);
        assert!(min <= max);
        let spec = &s.spec.template.spec;
        assert!(spec.timeout_seconds >= 1);
        assert_eq!(
            spec.containers.len(),
            1,
            "Knative runs one serving container"
        );
        let c = &spec.containers[0];
        assert_eq!(c.ports.len(), 1);
        assert_eq!(c.readiness_probe.http_get.port, c.ports[0].container_port);
        assert!(c.image.contains(':'), "{}", c.image);
        assert!(c.resources.limits.contains_key("memory"));
        let gpus = c.resources.limits.get("nvidia.com/gpu");
        assert_eq!(
            gpus.is_some(),
            spec.node_selector.contains_key("nvidia.com/gpu.product")
        );
        assert!(c.name.len() <= 63 && c.env.iter().all(|e| !e.name.is_empty()));
        assert!(
            c.env
                .iter()
                .all(|e| e.value.is_some() != e.value_from.is_some()),
            "each env var is a value or a reference"
        );
    }
    assert_eq!(services, 5);
}

/// `KEY := value` from the repository's Makefile.
fn makefile_var(key: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Makefile");
    let text = std::fs::read_to_string(&path).expect("read the Makefile");
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(":=")?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("the Makefile sets no {key}"))
}

/// `13.4` from `13.4.3` or `13.4.2-runtime-ubuntu24.04`.
fn major_minor(version: &str) -> String {
    version
        .split(['.', '-'])
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
}

#[test]
fn the_gpu_dockerfile_runs_on_the_cuda_release_make_gpu_builds_with() {
    let toolkit = makefile_var("CUDA_TOOLKIT");
    let rendered = render(&plan(), Target::Docker, &RenderOptions::default());
    let gpu = rendered
        .files
        .iter()
        .find(|f| f.path.ends_with("embed-gpu/Dockerfile"))
        .expect("the GPU function's Dockerfile");
    let from = gpu
        .text
        .lines()
        .find_map(|l| l.strip_prefix("FROM "))
        .expect("a FROM line");
    let tag = from
        .strip_prefix("nvidia/cuda:")
        .unwrap_or_else(|| panic!("{from} is not NVIDIA's CUDA image"));
    // The same major (the libraries' sonames) and minor (what cudarc's bindings expect).
    assert_eq!(
        major_minor(tag),
        major_minor(&toolkit),
        "FROM {from} against CUDA_TOOLKIT {toolkit}"
    );
    // An L4 runs the sm80 build.
    assert!(
        gpu.text
            .contains("COPY target/release/thaw target/cuda-sm80/release/embed "),
        "{}",
        gpu.text
    );
}

#[test]
fn the_makefile_builds_every_cuda_arch_and_each_gpu_type_copies_its_own() {
    let archs: Vec<String> = CudaArch::ALL
        .iter()
        .map(|a| a.compute_cap().to_string())
        .collect();
    assert_eq!(makefile_var("CUDA_ARCHS"), archs.join(" "));
    let mut plan = plan();
    let f = plan
        .functions
        .values_mut()
        .find(|f| f.spec.gpu.kind.is_some())
        .expect("a GPU function");
    f.spec.gpu.kind = Some(GpuKind::T4);
    let rendered = render(&plan, Target::Docker, &RenderOptions::default());
    assert!(rendered
        .files
        .iter()
        .any(|f| f.text.contains("target/cuda-sm75/release/embed")));
}
