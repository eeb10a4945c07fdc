//! The manifests under `deploy/`, checked against Kubernetes' types and against the binaries
//! they run.
//!
//! ```text
//!  deploy/**/*.yaml ──► k8s-openapi type by apiVersion/kind ──► round trip: no key lost
//!  deploy/**/kustomization.yaml ──► resources exist, every manifest is listed
//!  Deployments ──► container image ──► binary (clap Args) ──► args + env parse
//!                                                      └──► listen addresses = ports, probes,
//!                                                           Service and NetworkPolicy ports
//!  Dockerfile targets ◄── image names · RBAC ◄── movers.md (no exec, no secret listing)
//! ```
//!
//! k8s-openapi ignores unknown fields, so strictness is a round trip: deserialize into the
//! typed object, serialize it back, and require every key of the original to survive.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use clap::{CommandFactory, Parser};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{
            Container, Namespace, PersistentVolumeClaim, PodSpec, Probe, Service, ServiceAccount,
        },
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Loading deploy/

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// `deploy/...` as written in messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(OsStr::to_str),
        Some("kustomization.yaml" | "kustomization.yml")
    )
}

/// Every `*.yaml`/`*.yml` under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if matches!(
                path.extension().and_then(OsStr::to_str),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// One YAML document of a manifest file, as JSON.
struct Document {
    /// `deploy/agent/agent.yaml#2` (documents counted from 1).
    origin: String,
    raw: Value,
}

fn documents() -> Vec<Document> {
    let mut out = Vec::new();
    for path in yaml_files(&deploy_dir()) {
        if is_kustomization(&path) {
            continue;
        }
        let text = fs::read_to_string(&path).expect("manifest is readable");
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let origin = format!("{}#{}", shown(&path), i + 1);
            let yaml = serde_yaml::Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"));
            if yaml.is_null() {
                continue;
            }
            let raw = serde_json::to_value(&yaml)
                .unwrap_or_else(|e| panic!("{origin}: not representable as JSON: {e}"));
            out.push(Document { origin, raw });
        }
    }
    out
}

/// Every typed object of deploy/, by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    pvcs: Vec<PersistentVolumeClaim>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    network_policies: Vec<NetworkPolicy>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    sccs: Vec<SecurityContextConstraints>,
    disruption_budgets: Vec<PodDisruptionBudget>,
}

/// OpenShift's `security.openshift.io/v1` SecurityContextConstraints (no k8s-openapi type):
/// the fields deploy/openshift-scc sets, every one required.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SecurityContextConstraints {
    api_version: String,
    kind: String,
    metadata: SccMeta,
    priority: Option<i32>,
    allow_privileged_container: bool,
    allow_privilege_escalation: bool,
    allowed_capabilities: Vec<String>,
    required_drop_capabilities: Vec<String>,
    default_add_capabilities: Vec<String>,
    allow_host_dir_volume_plugin: bool,
    #[serde(rename = "allowHostIPC")]
    allow_host_ipc: bool,
    allow_host_network: bool,
    #[serde(rename = "allowHostPID")]
    allow_host_pid: bool,
    allow_host_ports: bool,
    read_only_root_filesystem: bool,
    run_as_user: SccStrategy,
    se_linux_context: SccStrategy,
    fs_group: SccStrategy,
    supplemental_groups: SccStrategy,
    seccomp_profiles: Vec<String>,
    volumes: Vec<String>,
    users: Vec<String>,
    groups: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SccMeta {
    name: String,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SccStrategy {
    r#type: String,
}

impl Manifests {
    /// Adds a document as its typed object, refusing unknown kinds and unknown fields.
    fn add(&mut self, doc: &Document) -> Result<(), String> {
        let field = |name: &str| doc.raw.get(name).and_then(Value::as_str).unwrap_or("");
        match (field("apiVersion"), field("kind")) {
            ("v1", "Namespace") => self.namespaces.push(strict(&doc.raw)?),
            ("v1", "ServiceAccount") => self.service_accounts.push(strict(&doc.raw)?),
            ("v1", "PersistentVolumeClaim") => self.pvcs.push(strict(&doc.raw)?),
            ("v1", "Service") => self.services.push(strict(&doc.raw)?),
            ("apps/v1", "Deployment") => self.deployments.push(strict(&doc.raw)?),
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                self.network_policies.push(strict(&doc.raw)?)
            }
            ("rbac.authorization.k8s.io/v1", "Role") => self.roles.push(strict(&doc.raw)?),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                self.role_bindings.push(strict(&doc.raw)?)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                self.cluster_roles.push(strict(&doc.raw)?)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                self.cluster_role_bindings.push(strict(&doc.raw)?)
            }
            ("security.openshift.io/v1", "SecurityContextConstraints") => {
                self.sccs.push(strict(&doc.raw)?)
            }
            ("policy/v1", "PodDisruptionBudget") => self.disruption_budgets.push(strict(&doc.raw)?),
            (api, kind) => {
                return Err(format!(
                    "unknown apiVersion/kind {api:?}/{kind:?} (this test knows Namespace, \
                     ServiceAccount, PersistentVolumeClaim, Service, Deployment, NetworkPolicy, \
                     Role, RoleBinding, ClusterRole, ClusterRoleBinding, \
                     SecurityContextConstraints, PodDisruptionBudget)"
                ));
            }
        }
        Ok(())
    }

    /// All of deploy/; panics naming every document that does not parse strictly.
    fn load() -> Self {
        let mut manifests = Self::default();
        let errors: Vec<String> = documents()
            .iter()
            .filter_map(|d| manifests.add(d).err().map(|e| format!("{}: {e}", d.origin)))
            .collect();
        assert!(
            errors.is_empty(),
            "deploy/ does not parse:\n{}",
            errors.join("\n")
        );
        manifests
    }
}

/// Deserializes `raw` into `T` and requires the round trip to keep every key and value.
fn strict<T: DeserializeOwned + Serialize>(raw: &Value) -> Result<T, String> {
    let type_name = std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("?");
    let typed: T =
        serde_json::from_value(raw.clone()).map_err(|e| format!("not a valid {type_name}: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("{type_name}: {e}"))?;
    let mut lost = Vec::new();
    compare(raw, &back, "", &mut lost);
    if lost.is_empty() {
        Ok(typed)
    } else {
        Err(format!(
            "unknown to {type_name} (lost in a round trip through k8s-openapi): {}",
            lost.join(", ")
        ))
    }
}

/// Records in `lost` every path of `original` that `back` lacks or changed.
fn compare(original: &Value, back: &Value, path: &str, lost: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (key, value) in o {
                let path = format!("{path}.{key}");
                match b.get(key) {
                    Some(bv) => compare(value, bv, &path, lost),
                    None => lost.push(path),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => {
            for (i, (ov, bv)) in o.iter().zip(b).enumerate() {
                compare(ov, bv, &format!("{path}[{i}]"), lost);
            }
        }
        (o, b) if o == b => {}
        (o, b) => lost.push(format!("{path} ({o} came back as {b})")),
    }
}

// ---------------------------------------------------------------------------------------------
// The binaries the Deployments run

/// Where a binary listens, from its parsed flags.
struct Listening {
    grpc: Option<SocketAddr>,
    /// The plaintext gRPC health port (kubelet's probes speak no TLS).
    health: Option<SocketAddr>,
    /// The gRPC port speaks TLS only.
    tls: bool,
    metrics: SocketAddr,
    /// A scheduler on its embedded store: where it is.
    data_dir: Option<PathBuf>,
    /// A scheduler on etcd: the replica's name, as the flags leave it.
    etcd: Option<EtcdReplica>,
    scheduler_url: Option<String>,
}

/// A scheduler replica on etcd, from its parsed flags.
struct EtcdReplica {
    /// The flags' etcd settings were accepted.
    options: snapgate_etcd::EtcdOptions,
}

/// A snapgate binary, as a container image runs it.
struct Binary {
    /// The executable, the image name and (without `snapgate-`) the Dockerfile target.
    name: &'static str,
    command: fn() -> clap::Command,
    parse: fn(&[String]) -> Result<Listening, clap::Error>,
    /// Environment the binary reads that is no flag's.
    other_env: &'static [&'static str],
    /// Its source, where HTTP probe paths must be routed.
    source_dir: &'static str,
}

/// Proxy variables the agent passes on to mover Jobs (movers.md).
const PROXY_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

fn binaries() -> Vec<Binary> {
    vec![
        Binary {
            name: "snapgate-scheduler",
            command: snapgate_scheduler::args::Args::command,
            parse: |argv| {
                let a = snapgate_scheduler::args::Args::try_parse_from(argv)?;
                // The deployed flags must also pass the checks made at start (authentication
                // on a non-loopback address, well-formed grants, the hold bounds).
                let refused = |e: anyhow::Error| {
                    clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e:#}"))
                };
                a.security().map_err(refused)?;
                a.lease_policy().map_err(refused)?;
                let (data_dir, etcd) = match a.store {
                    snapgate_scheduler::args::StoreKind::Redb => (Some(a.data_dir.clone()), None),
                    snapgate_scheduler::args::StoreKind::Etcd => (
                        None,
                        Some(EtcdReplica {
                            options: a.etcd_options().map_err(refused)?,
                        }),
                    ),
                };
                Ok(Listening {
                    grpc: Some(a.listen),
                    health: a.health_listen,
                    tls: a.tls_cert.is_some(),
                    metrics: a.metrics_listen,
                    data_dir,
                    etcd,
                    scheduler_url: None,
                })
            },
            other_env: &[],
            source_dir: "scheduler/src",
        },
        Binary {
            name: "snapgate-agent",
            command: snapgate_agent::args::Args::command,
            parse: |argv| {
                let a = snapgate_agent::args::Args::try_parse_from(argv)?;
                Ok(Listening {
                    grpc: None,
                    health: None,
                    tls: false,
                    metrics: a.metrics_listen,
                    data_dir: None,
                    etcd: None,
                    scheduler_url: Some(a.scheduler),
                })
            },
            other_env: PROXY_ENV,
            source_dir: "agent/src",
        },
    ]
}

/// `ghcr.io/snapgate/snapgate-agent:0.1.0` → (`snapgate-agent`, `0.1.0`).
fn image_name_and_tag(image: &str) -> (&str, &str) {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').unwrap_or((last, ""))
}

/// A container of a Deployment in deploy/, with the binary its image runs.
struct Run<'a> {
    at: String,
    deployment: &'a Deployment,
    pod: &'a PodSpec,
    container: &'a Container,
    binary: Binary,
}

impl Run<'_> {
    fn namespace(&self) -> &str {
        self.deployment.metadata.namespace.as_deref().unwrap_or("")
    }

    /// The command line the container runs: args, plus the env of flags as `--flag=value`.
    fn argv(&self) -> Result<Vec<String>, Vec<String>> {
        let mut errors = Vec::new();
        if self.container.command.is_some() {
            errors.push(format!(
                "{}: `command` overrides the image's entrypoint {}",
                self.at, self.binary.name
            ));
        }
        let mut argv = vec![self.binary.name.to_owned()];
        argv.extend(self.container.args.iter().flatten().cloned());
        let command = (self.binary.command)();
        for env in self.container.env.iter().flatten() {
            let flag = command
                .get_arguments()
                .find(|a| a.get_env() == Some(OsStr::new(&env.name)));
            let Some(flag) = flag else {
                if !self.binary.other_env.contains(&env.name.as_str()) {
                    errors.push(format!(
                        "{}: env {} is neither a flag's env of {} nor a variable it reads",
                        self.at, env.name, self.binary.name
                    ));
                }
                continue;
            };
            let long = flag.get_long().expect("every snapgate flag is long");
            let set_by_args = argv[1..]
                .iter()
                .any(|a| *a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
            if set_by_args {
                // clap prefers the flag; an env that never applies is a mistake.
                errors.push(format!(
                    "{}: env {} is shadowed by --{long} in args",
                    self.at, env.name
                ));
                continue;
            }
            let value = match (&env.value, &env.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.namespace") => self.namespace().to_owned(),
                        _ => "value-from-the-cluster".to_owned(),
                    }
                }
                (None, None) => String::new(),
            };
            argv.push(format!("--{long}={value}"));
        }
        if errors.is_empty() {
            Ok(argv)
        } else {
            Err(errors)
        }
    }

    fn listening(&self) -> Result<Listening, String> {
        let argv = self.argv().map_err(|e| e.join("\n"))?;
        (self.binary.parse)(&argv).map_err(|e| {
            format!(
                "{}: {} refuses `{}`: {}",
                self.at,
                self.binary.name,
                argv[1..].join(" "),
                e.render().to_string().trim()
            )
        })
    }

    /// The port a probe, Service or NetworkPolicy names, resolved against this container.
    fn resolve(&self, port: &IntOrString) -> Option<i32> {
        let ports = self.container.ports.iter().flatten();
        match port {
            IntOrString::Int(n) => ports.map(|p| p.container_port).find(|p| p == n),
            IntOrString::String(name) => ports
                .filter(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port)
                .next(),
        }
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        self.deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
    }
}

/// Every container of every Deployment; panics on an image that runs no known binary.
fn runs(m: &Manifests) -> Vec<Run<'_>> {
    let mut out = Vec::new();
    for deployment in &m.deployments {
        let pod = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("a Deployment has a pod template");
        for container in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let at = format!(
                "Deployment {}/{} container {}",
                deployment.metadata.namespace.as_deref().unwrap_or(""),
                deployment.metadata.name.as_deref().unwrap_or(""),
                container.name
            );
            let image = container.image.as_deref().unwrap_or("");
            let (name, _) = image_name_and_tag(image);
            let binary = binaries()
                .into_iter()
                .find(|b| b.name == name)
                .unwrap_or_else(|| panic!("{at}: image {image:?} runs no snapgate binary"));
            out.push(Run {
                at,
                deployment,
                pod,
                container,
                binary,
            });
        }
    }
    assert!(!out.is_empty(), "deploy/ has no Deployment");
    out
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn label_selector_selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    assert!(
        selector.match_expressions.is_none(),
        "matchExpressions are not checked by this test"
    );
    selects(&selector.match_labels.clone().unwrap_or_default(), labels)
}

fn fail_on(errors: Vec<String>, what: &str) {
    assert!(errors.is_empty(), "{what}:\n{}", errors.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[test]
fn every_yaml_document_in_deploy_parses_into_its_kubernetes_type_with_no_unknown_field() {
    let docs = documents();
    assert!(docs.len() >= 10, "deploy/ holds {} documents", docs.len());
    let mut manifests = Manifests::default();
    let errors = docs
        .iter()
        .filter_map(|d| manifests.add(d).err().map(|e| format!("{}: {e}", d.origin)))
        .collect();
    fail_on(errors, "manifests that do not parse strictly");
}

#[test]
fn the_strict_parse_names_the_path_of_an_unknown_field_and_refuses_an_unknown_kind() {
    let mut deployment: Value = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "template": {"spec": {"containers": [
            {"name": "c", "image": "i", "readinessProbe": {"grpc": {"port": 1, "servise": "s"}}}
        ]}}}
    });
    let error = strict::<Deployment>(&deployment).expect_err("a typo is refused");
    assert!(
        error.contains(".spec.template.spec.containers[0].readinessProbe.grpc.servise"),
        "{error}"
    );
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"] =
        serde_json::json!({"port": 1, "service": "s"});
    strict::<Deployment>(&deployment).expect("the corrected document parses");

    let unknown = Document {
        origin: "inline".into(),
        raw: serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}),
    };
    let error = Manifests::default()
        .add(&unknown)
        .expect_err("ConfigMap is refused");
    assert!(error.contains("unknown apiVersion/kind"), "{error}");
}

#[test]
fn every_kustomization_lists_files_that_exist_and_every_manifest_is_listed() {
    const KNOWN_KEYS: &[&str] = &[
        "apiVersion",
        "kind",
        "namespace",
        "resources",
        "components",
        "replacements",
        "patches",
        "labels",
        "images",
        "namePrefix",
        "nameSuffix",
    ];
    let files = yaml_files(&deploy_dir());
    let mut listed = BTreeSet::new();
    let mut errors = Vec::new();
    let mut count = 0;
    for path in files.iter().filter(|p| is_kustomization(p)) {
        count += 1;
        let at = shown(path);
        let text = fs::read_to_string(path).expect("kustomization is readable");
        let doc: serde_yaml::Mapping = match serde_yaml::from_str(&text) {
            Ok(d) => d,
            Err(e) => {
                errors.push(format!("{at}: not a YAML map: {e}"));
                continue;
            }
        };
        for key in doc.keys() {
            let key = key.as_str().unwrap_or("");
            if !KNOWN_KEYS.contains(&key) {
                errors.push(format!("{at}: key {key:?} is not one this test knows"));
            }
        }
        if doc.get("kind").and_then(serde_yaml::Value::as_str) != Some("Kustomization") {
            errors.push(format!("{at}: kind is not Kustomization"));
        }
        let dir = path.parent().expect("a file has a directory");
        let entries = doc
            .get("resources")
            .and_then(serde_yaml::Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        if entries.is_empty() {
            errors.push(format!("{at}: no resources"));
        }
        for entry in entries {
            let Some(entry) = entry.as_str() else {
                errors.push(format!("{at}: resource {entry:?} is not a string"));
                continue;
            };
            if entry.contains("://") {
                errors.push(format!("{at}: remote resource {entry}"));
                continue;
            }
            let target = dir.join(entry);
            if target.is_file() {
                listed.insert(target.canonicalize().expect("an existing file"));
            } else if !target.join("kustomization.yaml").is_file() {
                errors.push(format!(
                    "{at}: resource {entry} is neither a file nor a kustomization directory"
                ));
            }
        }
    }
    assert!(count >= 3, "deploy/ holds {count} kustomizations");
    for path in files.iter().filter(|p| !is_kustomization(p)) {
        if !listed.contains(&path.canonicalize().expect("an existing file")) {
            errors.push(format!("{}: listed by no kustomization", shown(path)));
        }
    }
    fail_on(errors, "kustomizations");
}

// ---------------------------------------------------------------------------------------------
// Agreement with the binaries

#[test]
fn every_container_sets_only_flags_and_env_its_binary_accepts() {
    let m = Manifests::load();
    let errors = runs(&m)
        .iter()
        .filter_map(|r| r.listening().err())
        .collect();
    fail_on(errors, "containers the binaries would refuse to start");
}

#[test]
fn every_container_port_and_probe_is_where_the_binary_listens() {
    let m = Manifests::load();
    let mut errors = Vec::new();
    for run in runs(&m) {
        let listening = match run.listening() {
            Ok(l) => l,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let at = &run.at;
        let mut expected = BTreeMap::from([("metrics", listening.metrics)]);
        if let Some(grpc) = listening.grpc {
            expected.insert("grpc", grpc);
        }
        if let Some(health) = listening.health {
            expected.insert("health", health);
        }
        if listening.tls && listening.health.is_none() {
            errors.push(format!(
                "{at}: TLS on the gRPC port without --health-listen: kubelet's gRPC probes speak no TLS"
            ));
        }
        let declared: BTreeMap<String, i32> = run
            .container
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
            .collect();
        for (name, addr) in &expected {
            if addr.ip().is_loopback() {
                errors.push(format!(
                    "{at}: the {name} listener is on {addr}, unreachable from outside the pod"
                ));
            }
            if declared.get(*name) != Some(&i32::from(addr.port())) {
                errors.push(format!(
                    "{at}: port {name} is {:?}, the binary listens on {addr}",
                    declared.get(*name)
                ));
            }
        }
        for name in declared.keys() {
            if !expected.contains_key(name.as_str()) {
                errors.push(format!(
                    "{at}: port {name:?} is not one the binary listens on"
                ));
            }
        }

        let probes = [
            ("startupProbe", &run.container.startup_probe),
            ("livenessProbe", &run.container.liveness_probe),
            ("readinessProbe", &run.container.readiness_probe),
        ];
        if run.container.liveness_probe.is_none() {
            errors.push(format!("{at}: no livenessProbe"));
        }
        for (kind, probe) in probes {
            let Some(probe) = probe else { continue };
            errors.extend(check_probe(&run, &listening, kind, probe));
        }
        if listening.grpc.is_some() && run.container.readiness_probe.is_none() {
            errors.push(format!("{at}: a gRPC server without a readinessProbe"));
        }
    }
    fail_on(errors, "ports and probes");
}

/// gRPC servers are probed with gRPC health on their gRPC port; others over HTTP on metrics.
fn check_probe(run: &Run<'_>, listening: &Listening, kind: &str, probe: &Probe) -> Vec<String> {
    let at = format!("{} {kind}", run.at);
    let health_services = [
        "",
        snapgate_proto::v1::source_service_server::SERVICE_NAME,
        snapgate_proto::v1::trigger_service_server::SERVICE_NAME,
        snapgate_proto::v1::agent_service_server::SERVICE_NAME,
    ];
    let mut errors = Vec::new();
    match (listening.grpc, &probe.grpc, &probe.http_get) {
        (Some(grpc), Some(action), None) => {
            // With a plaintext health port, probes go there (the gRPC port may speak TLS).
            let health = listening.health.unwrap_or(grpc);
            if action.port != i32::from(health.port()) {
                errors.push(format!(
                    "{at}: gRPC probe on port {}, the binary serves plaintext gRPC health on {health}",
                    action.port
                ));
            }
            let service = action.service.as_deref().unwrap_or("");
            if !health_services.contains(&service) {
                errors.push(format!(
                    "{at}: gRPC health service {service:?} is not one the scheduler reports \
                     ({health_services:?})"
                ));
            }
        }
        (None, None, Some(http)) => {
            if run.resolve(&http.port) != Some(i32::from(listening.metrics.port())) {
                errors.push(format!(
                    "{at}: HTTP probe on port {:?}, the binary serves HTTP on {}",
                    http.port, listening.metrics
                ));
            }
            let path = http.path.as_deref().unwrap_or("/");
            if !routes(run.binary.source_dir).contains(path) {
                errors.push(format!(
                    "{at}: HTTP probe path {path} is routed nowhere in {}",
                    run.binary.source_dir
                ));
            }
        }
        (Some(_), ..) => errors.push(format!("{at}: a gRPC server must be probed with `grpc`")),
        (None, ..) => errors.push(format!(
            "{at}: expected an httpGet probe on the metrics port"
        )),
    }
    errors
}

/// The HTTP paths a binary's source routes (`.route("/path", ...)`).
fn routes(source_dir: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut pending = vec![repo_root().join(source_dir)];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension() == Some(OsStr::new("rs")) {
                let text = fs::read_to_string(&path).expect("source file");
                for piece in text.split(".route(").skip(1) {
                    if let Some(route) = piece.trim_start().strip_prefix('"') {
                        out.insert(route.split('"').next().unwrap_or("").to_owned());
                    }
                }
            }
        }
    }
    out
}

#[test]
fn services_and_network_policies_select_a_deployment_and_reach_its_ports() {
    let m = Manifests::load();
    let runs = runs(&m);
    let mut errors = Vec::new();
    let in_namespace = |ns: &Option<String>| {
        runs.iter()
            .filter(|r| Some(r.namespace()) == ns.as_deref())
            .collect::<Vec<_>>()
    };
    for svc in &m.services {
        let at = format!("Service {}", svc.metadata.name.as_deref().unwrap_or(""));
        let spec = svc.spec.clone().unwrap_or_default();
        let selector = spec.selector.unwrap_or_default();
        let selected: Vec<_> = in_namespace(&svc.metadata.namespace)
            .into_iter()
            .filter(|r| !selector.is_empty() && selects(&selector, &r.pod_labels()))
            .collect();
        if selected.is_empty() {
            errors.push(format!("{at}: selects no Deployment of deploy/"));
        }
        for port in spec.ports.iter().flatten() {
            let target = port
                .target_port
                .clone()
                .unwrap_or(IntOrString::Int(port.port));
            if !selected.iter().any(|r| r.resolve(&target).is_some()) {
                errors.push(format!(
                    "{at}: targetPort {target:?} is no container's port"
                ));
            }
        }
    }
    for np in &m.network_policies {
        let at = format!(
            "NetworkPolicy {}",
            np.metadata.name.as_deref().unwrap_or("")
        );
        let spec = np.spec.clone().unwrap_or_default();
        let selected: Vec<_> = in_namespace(&np.metadata.namespace)
            .into_iter()
            .filter(|r| {
                label_selector_selects(
                    &spec.pod_selector.clone().unwrap_or_default(),
                    &r.pod_labels(),
                )
            })
            .collect();
        if selected.is_empty() {
            errors.push(format!("{at}: selects no Deployment of deploy/"));
        }
        if !spec.policy_types.iter().flatten().any(|t| t == "Ingress") {
            errors.push(format!("{at}: does not limit ingress"));
        }
        for rule in spec.ingress.iter().flatten() {
            if rule.from.as_ref().is_none_or(Vec::is_empty) {
                errors.push(format!("{at}: an ingress rule from anywhere"));
            }
            let ports = rule.ports.clone().unwrap_or_default();
            if ports.is_empty() {
                errors.push(format!("{at}: an ingress rule for every port"));
            }
            for port in ports {
                let port = port.port.unwrap_or(IntOrString::Int(0));
                if !selected.iter().any(|r| r.resolve(&port).is_some()) {
                    errors.push(format!("{at}: port {port:?} is no container's port"));
                }
            }
        }
    }
    fail_on(errors, "Services and NetworkPolicies");
}

#[test]
fn the_agent_reaches_the_scheduler_through_its_service_and_network_policy() {
    let m = Manifests::load();
    let runs = runs(&m);
    let mut errors = Vec::new();
    let mut agents = 0;
    for run in &runs {
        let Ok(Listening {
            scheduler_url: Some(url),
            ..
        }) = run.listening()
        else {
            continue;
        };
        agents += 1;
        let at = &run.at;
        let authority = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or(&url)
            .trim_end_matches('/');
        let Some((host, port)) = authority.rsplit_once(':') else {
            errors.push(format!("{at}: scheduler URL {url} names no port"));
            continue;
        };
        let port: i32 = port.parse().unwrap_or(-1);
        let service = m.services.iter().find(|s| {
            let name = s.metadata.name.as_deref().unwrap_or("");
            let ns = s.metadata.namespace.as_deref().unwrap_or("");
            [
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}.svc.cluster.local"),
            ]
            .contains(&host.to_owned())
        });
        let Some(service) = service else {
            errors.push(format!(
                "{at}: scheduler host {host} is no Service of deploy/"
            ));
            continue;
        };
        let spec = service.spec.clone().unwrap_or_default();
        let selector = spec.selector.unwrap_or_default();
        let Some(port) = spec.ports.iter().flatten().find(|p| p.port == port) else {
            errors.push(format!("{at}: the scheduler Service has no port {port}"));
            continue;
        };
        let target = port
            .target_port
            .clone()
            .unwrap_or(IntOrString::Int(port.port));
        let scheduler = runs.iter().find(|r| {
            Some(r.namespace()) == service.metadata.namespace.as_deref()
                && selects(&selector, &r.pod_labels())
        });
        let Some(scheduler) = scheduler else {
            errors.push(format!("{at}: the scheduler Service selects no Deployment"));
            continue;
        };
        let grpc = scheduler.listening().ok().and_then(|l| l.grpc);
        let reached = scheduler.resolve(&target);
        if grpc.map(|g| i32::from(g.port())) != reached || reached.is_none() {
            errors.push(format!(
                "{at}: {url} reaches container port {reached:?}, the scheduler serves gRPC on \
                 {grpc:?}"
            ));
        }
        // Some NetworkPolicy on the scheduler must admit the agent's pods to that port.
        let agent_labels = run.pod_labels();
        let admitted = m.network_policies.iter().any(|np| {
            let spec = np.spec.clone().unwrap_or_default();
            np.metadata.namespace == scheduler.deployment.metadata.namespace
                && label_selector_selects(
                    &spec.pod_selector.clone().unwrap_or_default(),
                    &scheduler.pod_labels(),
                )
                && spec.ingress.iter().flatten().any(|rule| {
                    let peer_ok = rule.from.iter().flatten().any(|peer| {
                        peer.ip_block.is_none()
                            && peer.namespace_selector.as_ref().is_some_and(|s| {
                                s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                            })
                            && peer
                                .pod_selector
                                .as_ref()
                                .is_some_and(|s| label_selector_selects(s, &agent_labels))
                    });
                    let port_ok = rule.ports.iter().flatten().any(|p| {
                        p.port
                            .as_ref()
                            .is_some_and(|p| scheduler.resolve(p) == reached)
                    });
                    peer_ok && port_ok
                })
        });
        if !admitted {
            errors.push(format!(
                "{at}: no NetworkPolicy admits pods labelled {agent_labels:?} from any namespace \
                 to the scheduler's gRPC port"
            ));
        }
    }
    assert!(agents > 0, "deploy/ has no agent Deployment");
    fail_on(errors, "the agent's way to the scheduler");
}

#[test]
fn every_image_is_a_dockerfile_target_at_the_workspace_version() {
    let m = Manifests::load();
    let dockerfile = repo_root().join("deploy/Dockerfile");
    let text = fs::read_to_string(&dockerfile).expect("deploy/Dockerfile");
    // Stage name → its instructions (continuation lines joined).
    let mut stages: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.replace("\\\n", " ").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[0].eq_ignore_ascii_case("FROM") {
            current = match words.as_slice() {
                [_, _, as_, name] if as_.eq_ignore_ascii_case("AS") => (*name).to_owned(),
                _ => String::new(),
            };
        }
        stages
            .entry(current.clone())
            .or_default()
            .push(line.to_owned());
    }
    let mut errors = Vec::new();
    for run in runs(&m) {
        let at = &run.at;
        let image = run.container.image.as_deref().unwrap_or("");
        let (name, tag) = image_name_and_tag(image);
        if tag != env!("CARGO_PKG_VERSION") {
            errors.push(format!(
                "{at}: image {image} is not tagged with the workspace version {}",
                env!("CARGO_PKG_VERSION")
            ));
        }
        let target = name.strip_prefix("snapgate-").unwrap_or(name);
        let Some(stage) = stages.get(target) else {
            errors.push(format!(
                "{at}: image {image}: the Dockerfile has no target {target}"
            ));
            continue;
        };
        let entrypoint = format!("ENTRYPOINT [\"/usr/local/bin/{name}\"]");
        if !stage.contains(&entrypoint) {
            errors.push(format!(
                "{at}: Dockerfile target {target} lacks `{entrypoint}`"
            ));
        }
        let user = stage.iter().rev().find(|l| l.starts_with("USER "));
        if user.is_none_or(|u| {
            let uid = u["USER ".len()..].split(':').next().unwrap_or("");
            uid == "0" || uid == "root"
        }) {
            errors.push(format!("{at}: Dockerfile target {target} runs as root"));
        }
        let built = stages
            .values()
            .flatten()
            .any(|l| l.starts_with("RUN ") && l.contains(&format!("-p {name} ")));
        if !built {
            errors.push(format!("{at}: the Dockerfile does not build -p {name}"));
        }
    }
    fail_on(errors, "images");
}

// ---------------------------------------------------------------------------------------------
// How the pods run

#[test]
fn every_pod_runs_non_root_on_a_read_only_root_filesystem_with_resource_requests() {
    let m = Manifests::load();
    let mut errors = Vec::new();
    for run in runs(&m) {
        let at = &run.at;
        let pod = run.pod.security_context.clone().unwrap_or_default();
        if pod.run_as_non_root != Some(true) {
            errors.push(format!("{at}: the pod does not set runAsNonRoot: true"));
        }
        if pod.run_as_user == Some(0) {
            errors.push(format!("{at}: the pod runs as uid 0"));
        }
        let c = run.container.security_context.clone().unwrap_or_default();
        if c.read_only_root_filesystem != Some(true) {
            errors.push(format!("{at}: the root filesystem is writable"));
        }
        if c.allow_privilege_escalation != Some(false) {
            errors.push(format!("{at}: privilege escalation is not disabled"));
        }
        if c.privileged == Some(true) || c.run_as_user == Some(0) {
            errors.push(format!("{at}: privileged or root"));
        }
        let drops_all = c
            .capabilities
            .and_then(|caps| caps.drop)
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        if !drops_all {
            errors.push(format!("{at}: capabilities are not all dropped"));
        }
        let requests = run
            .container
            .resources
            .clone()
            .and_then(|r| r.requests)
            .unwrap_or_default();
        for resource in ["cpu", "memory"] {
            if !requests.contains_key(resource) {
                errors.push(format!("{at}: no {resource} request"));
            }
        }
    }
    fail_on(errors, "pod security and resources");
}

#[test]
fn the_scheduler_is_one_replica_with_its_data_on_a_persistent_volume_claim() {
    let m = Manifests::load();
    let mut errors = Vec::new();
    let mut schedulers = 0;
    for run in runs(&m) {
        let Ok(Listening {
            data_dir: Some(data_dir),
            ..
        }) = run.listening()
        else {
            continue;
        };
        schedulers += 1;
        let at = &run.at;
        let spec = run.deployment.spec.clone().unwrap_or_default();
        if spec.replicas != Some(1) {
            errors.push(format!(
                "{at}: replicas {:?}, the store has one writer",
                spec.replicas
            ));
        }
        if spec.strategy.and_then(|s| s.type_).as_deref() != Some("Recreate") {
            errors.push(format!(
                "{at}: an update would run two schedulers (use Recreate)"
            ));
        }
        let mount = run
            .container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|vm| data_dir.starts_with(&vm.mount_path))
            .max_by_key(|vm| vm.mount_path.len());
        let Some(mount) = mount else {
            errors.push(format!(
                "{at}: --data-dir {} is on the (read-only) root filesystem",
                data_dir.display()
            ));
            continue;
        };
        if mount.read_only == Some(true) {
            errors.push(format!("{at}: the data volume is mounted read-only"));
        }
        let claim = run
            .pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.clone());
        let exists = claim.as_ref().is_some_and(|c| {
            m.pvcs.iter().any(|p| {
                p.metadata.name.as_ref() == Some(c)
                    && p.metadata.namespace.as_deref() == Some(run.namespace())
            })
        });
        if !exists {
            errors.push(format!(
                "{at}: volume {} is not a PersistentVolumeClaim of deploy/ ({claim:?})",
                mount.name
            ));
        }
    }
    assert_eq!(
        schedulers, 1,
        "deploy/ should run exactly one scheduler on the embedded store"
    );
    fail_on(errors, "the scheduler's store");
}

/// deploy/scheduler-ha: three replicas on etcd over mutual TLS, each named by its pod, ready
/// only while leading (so the Service reaches the leader alone), every one reachable through a
/// headless Service (followers serve reads), updated one at a time and guarded by a
/// disruption budget; the network policy lets them reach etcd.
#[test]
fn the_replicated_scheduler_runs_three_replicas_on_etcd_and_only_the_leader_is_ready() {
    let m = Manifests::load();
    let mut errors = Vec::new();
    let mut replicated = 0;
    for run in runs(&m) {
        let Ok(Listening {
            etcd: Some(etcd), ..
        }) = run.listening()
        else {
            continue;
        };
        replicated += 1;
        let at = &run.at;
        let spec = run.deployment.spec.clone().unwrap_or_default();
        if spec.replicas != Some(3) {
            errors.push(format!("{at}: replicas {:?}, want 3", spec.replicas));
        }
        let strategy = spec.strategy.unwrap_or_default();
        let rolling = strategy.rolling_update.unwrap_or_default();
        if strategy.type_.as_deref() != Some("RollingUpdate")
            || rolling.max_surge != Some(IntOrString::Int(0))
            || rolling.max_unavailable != Some(IntOrString::Int(1))
        {
            errors.push(format!(
                "{at}: update one replica at a time (RollingUpdate, maxSurge 0, maxUnavailable 1)"
            ));
        }
        if etcd.options.tls.as_ref().is_none_or(|t| t.cert.is_none()) {
            errors.push(format!("{at}: etcd without a client certificate"));
        }
        let named = run.container.env.iter().flatten().any(|e| {
            e.name == "SNAPGATE_REPLICA_NAME"
                && e.value_from
                    .as_ref()
                    .and_then(|f| f.field_ref.as_ref())
                    .is_some_and(|f| f.field_path == "metadata.name")
        });
        if !named {
            errors.push(format!("{at}: SNAPGATE_REPLICA_NAME is not the pod's name"));
        }
        let ready = run
            .container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.grpc.as_ref())
            .and_then(|g| g.service.as_deref());
        if ready != Some("snapgate.v1.SourceService") {
            errors.push(format!(
                "{at}: the readiness probe must ask for snapgate.v1.SourceService (NOT_SERVING \
                 on followers), not {ready:?}"
            ));
        }
        let labels = run.pod_labels();
        let budget = m.disruption_budgets.iter().any(|b| {
            b.metadata.namespace.as_deref() == Some(run.namespace())
                && b.spec.as_ref().is_some_and(|s| {
                    s.max_unavailable == Some(IntOrString::Int(1))
                        && s.selector
                            .as_ref()
                            .is_some_and(|sel| label_selector_selects(sel, &labels))
                })
        });
        if !budget {
            errors.push(format!(
                "{at}: no PodDisruptionBudget with maxUnavailable 1 selects its pods"
            ));
        }
        // Followers serve reads: a headless Service reaches every replica, ready or not.
        let replicas_service = m.services.iter().any(|s| {
            s.metadata.namespace.as_deref() == Some(run.namespace())
                && s.spec.as_ref().is_some_and(|spec| {
                    spec.cluster_ip.as_deref() == Some("None")
                        && spec.publish_not_ready_addresses == Some(true)
                        && spec.selector.as_ref().is_some_and(|sel| {
                            !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                        })
                })
        });
        if !replicas_service {
            errors.push(format!(
                "{at}: no headless Service (publishNotReadyAddresses) reaches every replica for \
                 follower reads"
            ));
        }
    }
    assert_eq!(
        replicated, 1,
        "deploy/ should hold one replicated scheduler"
    );
    fail_on(errors, "the replicated scheduler");
}

// ---------------------------------------------------------------------------------------------
// RBAC

/// (apiGroup, resource, verb) triples a rule grants.
fn grants(rule: &PolicyRule) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for group in rule.api_groups.iter().flatten() {
        for resource in rule.resources.iter().flatten() {
            for verb in &rule.verbs {
                out.insert((group.clone(), resource.clone(), verb.clone()));
            }
        }
    }
    out
}

#[test]
fn every_binding_names_the_service_account_of_a_deployment_and_a_role_of_deploy() {
    let m = Manifests::load();
    let runs = runs(&m);
    let mut errors = Vec::new();
    let mut bound: BTreeSet<(String, String)> = BTreeSet::new();
    let bindings = m
        .role_bindings
        .iter()
        .map(|b| (&b.metadata, &b.role_ref, &b.subjects, "RoleBinding"))
        .chain(
            m.cluster_role_bindings
                .iter()
                .map(|b| (&b.metadata, &b.role_ref, &b.subjects, "ClusterRoleBinding")),
        );
    for (meta, role_ref, subjects, kind) in bindings {
        let at = format!("{kind} {}", meta.name.as_deref().unwrap_or(""));
        let role_exists = match (kind, role_ref.kind.as_str()) {
            ("RoleBinding", "Role") => m.roles.iter().any(|r| {
                r.metadata.name.as_deref() == Some(&role_ref.name)
                    && r.metadata.namespace == meta.namespace
            }),
            ("ClusterRoleBinding", "ClusterRole") => m
                .cluster_roles
                .iter()
                .any(|r| r.metadata.name.as_deref() == Some(&role_ref.name)),
            _ => false,
        };
        if !role_exists {
            errors.push(format!(
                "{at}: roleRef {} {} is not in deploy/ (a RoleBinding binds a Role, a \
                 ClusterRoleBinding a ClusterRole)",
                role_ref.kind, role_ref.name
            ));
        }
        let subjects = subjects.clone().unwrap_or_default();
        if subjects.is_empty() {
            errors.push(format!("{at}: no subjects"));
        }
        for s in subjects {
            let ns = s.namespace.clone().or_else(|| meta.namespace.clone());
            let runs_as = runs.iter().any(|r| {
                Some(r.namespace()) == ns.as_deref()
                    && r.pod.service_account_name.as_deref() == Some(&s.name)
            });
            let account = m
                .service_accounts
                .iter()
                .any(|a| a.metadata.name.as_deref() == Some(&s.name) && a.metadata.namespace == ns);
            if s.kind != "ServiceAccount" || !runs_as || !account {
                errors.push(format!(
                    "{at}: subject {} {}/{} is not the ServiceAccount (in deploy/) of a \
                     Deployment",
                    s.kind,
                    ns.as_deref().unwrap_or(""),
                    s.name
                ));
            }
            bound.insert((ns.unwrap_or_default(), s.name));
        }
    }
    for run in &runs {
        let account = run.pod.service_account_name.clone().unwrap_or_default();
        let is_bound = bound.contains(&(run.namespace().to_owned(), account.clone()));
        let token = run.pod.automount_service_account_token != Some(false);
        if !is_bound && token {
            errors.push(format!(
                "{}: ServiceAccount {account} has no rights, so it should get no token \
                 (automountServiceAccountToken: false)",
                run.at
            ));
        }
        if is_bound && !token {
            errors.push(format!(
                "{}: bound, but its API token is not mounted",
                run.at
            ));
        }
    }
    fail_on(errors, "bindings");
}

#[test]
fn no_role_grants_exec_secret_listing_or_wildcards() {
    let m = Manifests::load();
    let rules = m
        .roles
        .iter()
        .map(|r| {
            (
                format!("Role {}", r.metadata.name.as_deref().unwrap_or("")),
                &r.rules,
            )
        })
        .chain(m.cluster_roles.iter().map(|r| {
            (
                format!("ClusterRole {}", r.metadata.name.as_deref().unwrap_or("")),
                &r.rules,
            )
        }));
    let mut errors = Vec::new();
    for (at, rules) in rules {
        for rule in rules.iter().flatten() {
            let wild = |v: &Option<Vec<String>>| v.iter().flatten().any(|x| x.contains('*'));
            if wild(&rule.api_groups)
                || wild(&rule.resources)
                || rule.verbs.iter().any(|v| v == "*")
            {
                errors.push(format!("{at}: a wildcard in {rule:?}"));
            }
            if rule.non_resource_urls.is_some() {
                errors.push(format!("{at}: grants non-resource URLs"));
            }
            for (group, resource, verb) in grants(rule) {
                if group.is_empty()
                    && ["pods/exec", "pods/attach", "pods/portforward"].contains(&resource.as_str())
                {
                    errors.push(format!("{at}: grants {verb} on {resource}"));
                }
                if group.is_empty() && resource == "secrets" && verb != "get" {
                    errors.push(format!("{at}: grants {verb} on secrets (only get)"));
                }
            }
        }
    }
    fail_on(errors, "forbidden rights");
}

#[test]
fn the_agent_role_grants_what_movers_md_lists_and_nothing_more() {
    // movers.md "RBAC the agent needs", less what the agent never does: `get` on PVCs,
    // snapshots, Jobs and pods (it reads them from its watches and lists a Job's pods),
    // `patch` on events (it creates each Event once); plus `watch` on pods and `list` and
    // `watch` on events: stuck mover pods (movers.md "Stuck mover pods");
    // plus `patch` on Jobs: a paused source's mover Job is patched to parallelism 0 (movers.md
    // "Common to every mover Job"); plus `create` on localsubjectaccessreviews: the review of
    // each run's author (docs/security.md, "No confused deputy").
    // tests/tests/rbac.rs proves each verb is used.
    let expected: BTreeSet<(String, String, String)> = [
        (
            "",
            "persistentvolumeclaims",
            "list watch patch create delete",
        ),
        (
            "snapshot.storage.k8s.io",
            "volumesnapshots",
            "list watch create delete",
        ),
        ("batch", "jobs", "list watch create delete patch"),
        ("", "serviceaccounts", "get create delete"),
        ("volsync.backube", "replicationsources", "list"),
        ("", "pods", "list watch"),
        ("", "pods/log", "get"),
        ("", "secrets", "get"),
        ("", "events", "create list watch"),
        (
            "authorization.k8s.io",
            "localsubjectaccessreviews",
            "create",
        ),
    ]
    .into_iter()
    .flat_map(|(group, resource, verbs)| {
        verbs
            .split(' ')
            .map(move |v| (group.to_owned(), resource.to_owned(), v.to_owned()))
    })
    .collect();
    let m = Manifests::load();
    let agent_accounts: BTreeSet<(String, String)> = runs(&m)
        .iter()
        .filter(|r| r.binary.name == "snapgate-agent")
        .map(|r| {
            let account = r.pod.service_account_name.clone().unwrap_or_default();
            (r.namespace().to_owned(), account)
        })
        .collect();
    let mut roles = 0;
    let mut errors = Vec::new();
    for binding in &m.role_bindings {
        let ns = binding.metadata.namespace.clone().unwrap_or_default();
        let for_agent = binding.subjects.iter().flatten().any(|s| {
            agent_accounts.contains(&(s.namespace.clone().unwrap_or(ns.clone()), s.name.clone()))
        });
        if !for_agent {
            continue;
        }
        let role = m.roles.iter().find(|r| {
            r.metadata.name.as_deref() == Some(&binding.role_ref.name)
                && r.metadata.namespace.as_deref() == Some(&ns)
        });
        let Some(role) = role else { continue };
        if binding.role_ref.name == "snapgate-agent-openshift" {
            // deploy/agent-openshift: checked by the_openshift_agent_may_grant_the_mover_scc_only.
            continue;
        }
        roles += 1;
        let at = format!("Role {ns}/{}", binding.role_ref.name);
        if role
            .rules
            .iter()
            .flatten()
            .any(|r| r.resource_names.is_some())
        {
            errors.push(format!("{at}: resourceNames (names are generated per run)"));
        }
        let granted: BTreeSet<_> = role.rules.iter().flatten().flat_map(grants).collect();
        for extra in granted.difference(&expected) {
            errors.push(format!(
                "{at}: grants {extra:?}, which movers.md does not list"
            ));
        }
        for missing in expected.difference(&granted) {
            errors.push(format!("{at}: lacks {missing:?}, which the agent needs"));
        }
    }
    assert!(roles > 0, "no Role is bound to an agent's ServiceAccount");
    fail_on(errors, "the agent's Role");
}

#[test]
fn the_openshift_agent_may_grant_the_mover_scc_only() {
    let m = Manifests::load();
    let role = m
        .roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("snapgate-agent-openshift"))
        .expect("deploy/agent-openshift has its Role");
    let granted: BTreeSet<_> = role.rules.iter().flatten().flat_map(grants).collect();
    let expected: BTreeSet<_> = [
        ("rbac.authorization.k8s.io", "roles", "create"),
        ("rbac.authorization.k8s.io", "roles", "get"),
        ("rbac.authorization.k8s.io", "roles", "delete"),
        ("rbac.authorization.k8s.io", "rolebindings", "create"),
        ("rbac.authorization.k8s.io", "rolebindings", "get"),
        ("rbac.authorization.k8s.io", "rolebindings", "delete"),
        ("security.openshift.io", "securitycontextconstraints", "use"),
    ]
    .into_iter()
    .map(|(g, r, v)| (g.to_owned(), r.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(granted, expected);
    // `use` of exactly the SCC deploy/openshift-scc ships, and no other.
    let scc_rule = role
        .rules
        .iter()
        .flatten()
        .find(|r| r.api_groups.as_deref() == Some(&["security.openshift.io".to_owned()][..]))
        .unwrap();
    let scc_names: Vec<&str> = m.sccs.iter().map(|s| s.metadata.name.as_str()).collect();
    assert_eq!(scc_names, ["snapgate-privileged-mover"]);
    assert_eq!(
        scc_rule.resource_names.as_deref(),
        Some(&["snapgate-privileged-mover".to_owned()][..])
    );
}

#[test]
fn the_mover_scc_allows_exactly_what_the_privileged_mover_jobs_ask_for() {
    use snapgate_agent_core::resources::{MoverImages, MoverJobInput, ResticActions, RunRef};
    use snapgate_e2e::MoverKind;
    use snapgate_proto::v1::CopyMethod as CopyMethodV1;
    let m = Manifests::load();
    let scc = &m.sccs[0];
    assert!(!scc.allow_privileged_container && !scc.allow_privilege_escalation);
    assert_eq!(
        scc.run_as_user.r#type, "RunAsAny",
        "rsync over ssh runs as root"
    );
    let allowed: BTreeSet<&str> = scc
        .allowed_capabilities
        .iter()
        .map(String::as_str)
        .collect();
    // Every capability any mover adds (rsync over ssh always; the others when privileged).
    let mut added = BTreeSet::new();
    let data = k8s_openapi::api::core::v1::PersistentVolumeClaim {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("data".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    // The e2e world's specs of the four movers, Direct.
    let specs = MoverKind::ALL.map(|m| m.spec(CopyMethodV1::Direct, std::time::Duration::ZERO));
    for spec in &specs {
        let job = snapgate_agent_core::resources::mover_job(&MoverJobInput {
            run: RunRef {
                namespace: "app",
                source: "db",
                run_id: "run-1",
            },
            spec: snapgate_agent_core::spec::MoverSpec::of(spec).unwrap(),
            paused: false,
            data_pvc: &data,
            privileged_movers: true,
            images: &MoverImages::default(),
            proxy: &BTreeMap::new(),
            secret_keys: &BTreeSet::new(),
            restic: ResticActions::default(),
            mover_account: Some("volsync-src-db"),
        })
        .unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        for c in &pod.containers {
            let sc = c.security_context.clone().unwrap_or_default();
            assert_ne!(sc.allow_privilege_escalation, Some(true));
            added.extend(sc.capabilities.and_then(|c| c.add).unwrap_or_default());
        }
        for v in pod.volumes.iter().flatten() {
            let kind = serde_json::to_value(v).unwrap();
            let kind = kind
                .as_object()
                .unwrap()
                .keys()
                .find(|k| *k != "name")
                .cloned()
                .unwrap();
            assert!(
                scc.volumes.contains(&kind),
                "volume type {kind} is not allowed"
            );
        }
    }
    let added: BTreeSet<&str> = added.iter().map(String::as_str).collect();
    assert_eq!(
        added, allowed,
        "the SCC allows exactly the capabilities movers add"
    );
}

#[test]
fn nothing_cluster_wide_is_granted_but_reading_the_agents_own_namespace() {
    let m = Manifests::load();
    let mut errors = Vec::new();
    for role in &m.cluster_roles {
        let name = role.metadata.name.clone().unwrap_or_default();
        let at = format!("ClusterRole {name}");
        let rules = role.rules.clone().unwrap_or_default();
        let namespace = match rules.as_slice() {
            [rule]
                if rule.api_groups.as_deref() == Some(&["".to_owned()])
                    && rule.resources.as_deref() == Some(&["namespaces".to_owned()])
                    && rule.verbs == ["get", "list", "watch"] =>
            {
                match rule.resource_names.as_deref() {
                    Some([ns]) => ns.clone(),
                    _ => {
                        errors.push(format!("{at}: reads namespaces, not exactly one"));
                        continue;
                    }
                }
            }
            _ => {
                errors.push(format!(
                    "{at}: grants more than get, list and watch on one namespace: {rules:?}"
                ));
                continue;
            }
        };
        let bindings: Vec<_> = m
            .cluster_role_bindings
            .iter()
            .filter(|b| b.role_ref.kind == "ClusterRole" && b.role_ref.name == name)
            .collect();
        if bindings.is_empty() {
            errors.push(format!("{at}: bound by no ClusterRoleBinding"));
        }
        for binding in bindings {
            for s in binding.subjects.iter().flatten() {
                if s.kind != "ServiceAccount" || s.namespace.as_deref() != Some(&namespace) {
                    errors.push(format!(
                        "{at}: get on namespace {namespace} is bound to {} {}/{}, not to a \
                         ServiceAccount of that namespace",
                        s.kind,
                        s.namespace.as_deref().unwrap_or(""),
                        s.name
                    ));
                }
            }
        }
    }
    for binding in &m.role_bindings {
        if binding.role_ref.kind != "Role" {
            errors.push(format!(
                "RoleBinding {}: binds a {} (cluster-defined rights)",
                binding.metadata.name.as_deref().unwrap_or(""),
                binding.role_ref.kind
            ));
        }
    }
    fail_on(errors, "cluster-wide rights");
}
