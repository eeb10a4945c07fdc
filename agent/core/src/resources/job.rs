//! The mover Jobs, exactly as movers.md (and VolSync's mover images) expect them.
//!
//! ```text
//!                   restic                 rclone                  rsync (ssh)             rsync-tls
//! command  /mover-restic/entry.sh  bash -c active.sh       bash -c source.sh       bash -c client.sh
//! args     [unlock] backup [prune]   -                       -                       -
//! mounts   /data /cache /tmp       /data /rclone-config/   /data|/dev/block /keys  /data|/dev/block
//!                                  /tmp                    /root/.ssh /tmp         /keys /tmp
//! backoff  8                       2                       2                       2
//! ```
//!
//! Every Job: `restartPolicy: Never`, `parallelism` 1 (0 while paused), no privilege escalation,
//! all capabilities dropped, read-only root filesystem, the temporary labels of its run on Job
//! and pod, and the source's moverSecurityContext / moverResources / moverAffinity /
//! moverPodLabels / moverServiceAccount / moverVolumes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{
            Affinity, Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar,
            EnvVarSource, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimVolumeSource,
            PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SecretKeySelector,
            SecretVolumeSource, SecurityContext, Volume, VolumeDevice, VolumeMount,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use snapgate_proto::v1;

use super::{RunRef, volume::temporary_meta};
use crate::{
    names,
    spec::{Mover, MoverSpec, SpecError, VolumeOptions, from_struct},
};

#[cfg(test)]
mod tests;

/// The default mover image: a pinned VolSync release (never `latest`). One image holds every
/// mover.
pub const DEFAULT_MOVER_IMAGE: &str = "quay.io/backube/volsync:0.14.0";

/// Where the data volume is mounted.
pub const DATA_MOUNT: &str = "/data";
/// Where a block-mode data volume is attached (rsync, rsync-tls).
pub const BLOCK_DEVICE: &str = "/dev/block";
/// Where the restic cache is mounted.
pub const CACHE_MOUNT: &str = "/cache";
/// Where a custom CA is mounted; the file is `ca.crt`.
pub const CUSTOM_CA_MOUNT: &str = "/customCA";
/// Where the rclone config secret is mounted.
pub const RCLONE_CONFIG_MOUNT: &str = "/rclone-config/";
/// Where ssh / TLS keys are mounted.
pub const KEYS_MOUNT: &str = "/keys";
/// Default rsync (ssh) port.
pub const DEFAULT_RSYNC_PORT: i32 = 22;
/// Default rsync-tls port.
pub const DEFAULT_RSYNC_TLS_PORT: i32 = 8000;
/// `FORGET_OPTIONS` when no retain policy says otherwise.
pub const DEFAULT_FORGET_OPTIONS: &str = "--keep-last 1";

const SECRET_MODE_0600: i32 = 0o600;
/// The longest `retain.within` passed to restic.
const MAX_RETAIN_LEN: usize = 64;
const CUSTOM_CA_FILE: &str = "ca.crt";
const GCS_CREDENTIALS_KEY: &str = "GOOGLE_APPLICATION_CREDENTIALS";
const GCS_CREDENTIALS_DIR: &str = "/credentials";
const GCS_CREDENTIALS_FILE: &str = "gcs.json";

/// Restic backend keys passed from the repository secret when present (optional
/// `secretKeyRef`s), after the required `RESTIC_REPOSITORY` and `RESTIC_PASSWORD`: VolSync's
/// 44, in its order (S3 with a profile or an assumed role, Swift, OpenStack, B2, Azure, GCS,
/// REST). Any `RCLONE_*` key of the secret follows.
pub const RESTIC_OPTIONAL_KEYS: &[&str; 44] = &[
    "RESTIC_COMPRESSION",
    "RESTIC_PACK_SIZE",
    "RESTIC_READ_CONCURRENCY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "RESTIC_AWS_ASSUME_ROLE_ARN",
    "RESTIC_AWS_ASSUME_ROLE_SESSION_NAME",
    "RESTIC_AWS_ASSUME_ROLE_EXTERNAL_ID",
    "RESTIC_AWS_ASSUME_ROLE_POLICY",
    "RESTIC_AWS_ASSUME_ROLE_REGION",
    "RESTIC_AWS_ASSUME_ROLE_STS_ENDPOINT",
    "ST_AUTH",
    "ST_USER",
    "ST_KEY",
    "OS_AUTH_URL",
    "OS_REGION_NAME",
    "OS_USERNAME",
    "OS_USER_ID",
    "OS_PASSWORD",
    "OS_TENANT_ID",
    "OS_TENANT_NAME",
    "OS_USER_DOMAIN_NAME",
    "OS_USER_DOMAIN_ID",
    "OS_PROJECT_NAME",
    "OS_PROJECT_DOMAIN_NAME",
    "OS_PROJECT_DOMAIN_ID",
    "OS_TRUST_ID",
    "OS_APPLICATION_CREDENTIAL_ID",
    "OS_APPLICATION_CREDENTIAL_NAME",
    "OS_APPLICATION_CREDENTIAL_SECRET",
    "OS_STORAGE_URL",
    "OS_AUTH_TOKEN",
    "B2_ACCOUNT_ID",
    "B2_ACCOUNT_KEY",
    "AZURE_ACCOUNT_NAME",
    "AZURE_ACCOUNT_KEY",
    "AZURE_ACCOUNT_SAS",
    "AZURE_ENDPOINT_SUFFIX",
    "GOOGLE_PROJECT_ID",
    "RESTIC_REST_USERNAME",
    "RESTIC_REST_PASSWORD",
];

/// The proxy variables passed on, each in upper and lower case.
pub const PROXY_VARIABLES: [(&str, &str); 3] = [
    ("HTTP_PROXY", "http_proxy"),
    ("HTTPS_PROXY", "https_proxy"),
    ("NO_PROXY", "no_proxy"),
];

/// The container image of each mover (configurable on the agent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoverImages {
    /// restic.
    pub restic: String,
    /// rclone.
    pub rclone: String,
    /// rsync over ssh.
    pub rsync: String,
    /// rsync over TLS.
    pub rsync_tls: String,
}

impl Default for MoverImages {
    fn default() -> Self {
        Self {
            restic: DEFAULT_MOVER_IMAGE.to_owned(),
            rclone: DEFAULT_MOVER_IMAGE.to_owned(),
            rsync: DEFAULT_MOVER_IMAGE.to_owned(),
            rsync_tls: DEFAULT_MOVER_IMAGE.to_owned(),
        }
    }
}

impl MoverImages {
    /// The image of `mover`.
    pub fn image(&self, mover: Mover) -> &str {
        match mover {
            Mover::Restic => &self.restic,
            Mover::Rclone => &self.rclone,
            Mover::Rsync => &self.rsync,
            Mover::RsyncTls => &self.rsync_tls,
        }
    }
}

/// What restic does this run besides `backup`, as decided outside the builder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResticActions {
    /// Run `unlock` first ([`crate::annotations::restic_unlock_due`]).
    pub unlock: bool,
    /// Run `prune` after the backup (the directive's `restic_prune`).
    pub prune: bool,
}

/// Everything one mover Job is built from.
#[derive(Clone, Copy, Debug)]
pub struct MoverJobInput<'a> {
    /// The run the Job belongs to.
    pub run: RunRef<'a>,
    /// The mover section of the source spec.
    pub spec: MoverSpec<'a>,
    /// The source is paused: the Job runs no pod (`parallelism: 0`).
    pub paused: bool,
    /// The volume the mover reads: the clone, the PVC restored from the snapshot, or the
    /// source PVC itself (Direct). Its name, access modes and volume mode are used.
    pub data_pvc: &'a PersistentVolumeClaim,
    /// The namespace allows privileged movers
    /// ([`crate::annotations::privileged_movers_allowed`]).
    pub privileged_movers: bool,
    /// The mover images.
    pub images: &'a MoverImages,
    /// Proxy variables present on the agent (upper- or lower-case names).
    pub proxy: &'a BTreeMap<String, String>,
    /// The keys of the mover's secret (restic repository or rclone config), as read when
    /// validating it: `RCLONE_*` keys become env, `GOOGLE_APPLICATION_CREDENTIALS` a file.
    pub secret_keys: &'a BTreeSet<String>,
    /// restic only: unlock and prune decisions.
    pub restic: ResticActions,
    /// The ServiceAccount the agent made for the source's mover
    /// ([`crate::names::mover_account_name`]), used when the source names no
    /// `moverServiceAccount`; `None`: the namespace's default.
    pub mover_account: Option<&'a str>,
}

/// The mover Job for one run.
pub fn mover_job(input: &MoverJobInput<'_>) -> Result<Job, SpecError> {
    let mover = input.spec.mover();
    let o = input.spec.volume_options();
    let data = DataVolume::of(input.data_pvc);
    let mut pod = PodParts::default();

    let (command, args, backoff_limit) = match input.spec {
        MoverSpec::Restic(r) => {
            restic(&mut pod, r, input, &data)?;
            let mut args = Vec::new();
            if input.restic.unlock {
                args.push("unlock".to_owned());
            }
            args.push("backup".to_owned());
            if input.restic.prune {
                args.push("prune".to_owned());
            }
            (vec!["/mover-restic/entry.sh".to_owned()], Some(args), 8)
        }
        MoverSpec::Rclone(r) => {
            rclone(&mut pod, r, input, &data)?;
            (bash("/mover-rclone/active.sh"), None, 2)
        }
        MoverSpec::Rsync(r) => {
            rsync(&mut pod, r, &data)?;
            (bash("/mover-rsync/source.sh"), None, 2)
        }
        MoverSpec::RsyncTls(r) => {
            rsync_tls(&mut pod, r, &data)?;
            (bash("/mover-rsync-tls/client.sh"), None, 2)
        }
    };
    pod.mount("tempdir", "/tmp", memory_dir());
    mover_volumes(&mut pod, &o)?;
    proxy_env(&mut pod.env, input.proxy);

    if mover != Mover::Rsync {
        let flag = if input.privileged_movers { "1" } else { "0" };
        pod.env.push(value_env("PRIVILEGED_MOVER", flag));
    }

    let resources: Option<ResourceRequirements> = from_struct(
        &format!("{}.moverResources", o.prefix),
        "ResourceRequirements",
        o.mover_resources,
    )?;
    let affinity: Option<Affinity> = from_struct(
        &format!("{}.moverAffinity", o.prefix),
        "Affinity",
        o.mover_affinity,
    )?;
    let pod_security: Option<PodSecurityContext> = from_struct(
        &format!("{}.moverSecurityContext", o.prefix),
        "PodSecurityContext",
        o.mover_security_context,
    )?
    // rsync over ssh runs as root (see `container_security`): a pod security context such as
    // `runAsNonRoot: true` would make the kubelet refuse its container, so, as VolSync does,
    // it is never applied there (still checked, so a typo is not silently kept).
    .filter(|_| mover != Mover::Rsync);

    let job_name = names::job_name(mover, input.run.source);
    let labels = names::temporary_labels(input.run.source, input.run.run_id);
    let mut pod_labels: BTreeMap<String, String> = o
        .mover_pod_labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    pod_labels.extend(labels.clone());

    let container = Container {
        name: mover.container_name().to_owned(),
        image: Some(input.images.image(mover).to_owned()),
        command: Some(command),
        args,
        env: Some(pod.env),
        resources,
        security_context: Some(container_security(mover, input.privileged_movers)),
        volume_mounts: Some(pod.mounts),
        volume_devices: (!pod.devices.is_empty()).then_some(pod.devices),
        ..Default::default()
    };
    // The user's account may rely on its token; the agent's own never needs one.
    let (service_account, automount) = match (o.mover_service_account, input.mover_account) {
        (Some(user), _) => (Some(user.to_owned()), None),
        (None, ours) => (ours.map(str::to_owned), Some(false)),
    };
    Ok(Job {
        metadata: temporary_meta(&input.run, job_name),
        spec: Some(JobSpec {
            backoff_limit: Some(backoff_limit),
            parallelism: Some(if input.paused { 0 } else { 1 }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    affinity,
                    // Movers never call the Kubernetes API: no token unless the user chose a
                    // service account (which may rely on it).
                    automount_service_account_token: automount,
                    containers: vec![container],
                    restart_policy: Some("Never".to_owned()),
                    security_context: pod_security,
                    service_account_name: service_account,
                    volumes: Some(pod.volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The container's security: nothing escalates, every capability is dropped, the root
/// filesystem is read-only. rsync (ssh) always adds sshd's capabilities and runs as root; the
/// other movers add VolSync's privileged-mover capabilities and run as root only in a namespace
/// that allows privileged movers.
fn container_security(mover: Mover, privileged_movers: bool) -> SecurityContext {
    let added: &[&str] = match (mover, privileged_movers) {
        (Mover::Rsync, _) => &[
            "AUDIT_WRITE",
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "SETGID",
            "SETUID",
            "SYS_CHROOT",
        ],
        (Mover::Restic | Mover::Rclone, true) => &["DAC_OVERRIDE", "CHOWN", "FOWNER"],
        (Mover::RsyncTls, true) => &["DAC_OVERRIDE", "CHOWN", "FOWNER", "SETGID"],
        (_, false) => &[],
    };
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            add: (!added.is_empty()).then(|| added.iter().map(|c| (*c).to_owned()).collect()),
            drop: Some(vec!["ALL".to_owned()]),
        }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_user: (!added.is_empty()).then_some(0),
        ..Default::default()
    }
}

/// `FORGET_OPTIONS` from a restic retain policy, in VolSync's order; none (or an empty
/// policy) keeps the last snapshot only.
pub fn forget_options(retain: Option<&v1::ResticRetainPolicy>) -> String {
    let Some(p) = retain else {
        return DEFAULT_FORGET_OPTIONS.to_owned();
    };
    let mut parts = Vec::new();
    for (flag, value) in [
        ("--keep-hourly", p.hourly),
        ("--keep-daily", p.daily),
        ("--keep-weekly", p.weekly),
        ("--keep-monthly", p.monthly),
        ("--keep-yearly", p.yearly),
    ] {
        if let Some(v) = value {
            parts.push(format!("{flag} {v}"));
        }
    }
    if let Some(w) = &p.within {
        parts.push(format!("--keep-within {w}"));
    }
    if let Some(l) = &p.last {
        parts.push(format!("--keep-last {l}"));
    }
    if parts.is_empty() {
        DEFAULT_FORGET_OPTIONS.to_owned()
    } else {
        parts.join(" ")
    }
}

/// The container's env, mounts and devices and the pod's volumes, as they are assembled.
#[derive(Default)]
struct PodParts {
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
    devices: Vec<VolumeDevice>,
    volumes: Vec<Volume>,
}

impl PodParts {
    fn mount(&mut self, name: &str, path: &str, volume: Volume) {
        self.mounts.push(VolumeMount {
            name: name.to_owned(),
            mount_path: path.to_owned(),
            ..Default::default()
        });
        self.volumes.push(Volume {
            name: name.to_owned(),
            ..volume
        });
    }

    /// The data volume at `/data`, or as `/dev/block` when it is a block volume and the mover
    /// can use one.
    fn data(&mut self, data: &DataVolume, block_ok: bool) -> Result<(), SpecError> {
        let volume = Volume {
            name: "data".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: data.name.clone(),
                read_only: data.read_only.then_some(true),
            }),
            ..Default::default()
        };
        if data.block {
            if !block_ok {
                return Err(SpecError::invalid(
                    "sourcePVC",
                    "block-mode volumes can be moved only by rsync and rsyncTLS",
                ));
            }
            self.devices.push(VolumeDevice {
                name: "data".to_owned(),
                device_path: BLOCK_DEVICE.to_owned(),
            });
            self.volumes.push(volume);
        } else {
            self.mounts.push(VolumeMount {
                name: "data".to_owned(),
                mount_path: DATA_MOUNT.to_owned(),
                read_only: data.read_only.then_some(true),
                ..Default::default()
            });
            self.volumes.push(volume);
        }
        Ok(())
    }
}

/// What the Job needs to know of the volume the mover reads.
struct DataVolume {
    name: String,
    /// Access modes exactly `[ReadOnlyMany]` (status first, then spec, as VolSync).
    read_only: bool,
    block: bool,
}

impl DataVolume {
    fn of(pvc: &PersistentVolumeClaim) -> Self {
        let status_modes = pvc
            .status
            .as_ref()
            .and_then(|s| s.access_modes.as_ref())
            .filter(|m| !m.is_empty());
        let modes =
            status_modes.or_else(|| pvc.spec.as_ref().and_then(|s| s.access_modes.as_ref()));
        Self {
            name: pvc.metadata.name.clone().unwrap_or_default(),
            read_only: modes
                .is_some_and(|m| matches!(m.as_slice(), [only] if only == "ReadOnlyMany")),
            block: pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block"),
        }
    }
}

fn restic(
    pod: &mut PodParts,
    r: &v1::ReplicationSourceResticSpec,
    input: &MoverJobInput<'_>,
    data: &DataVolume,
) -> Result<(), SpecError> {
    let repo = required("restic.repository", &r.repository)?;
    if let Some(retain) = &r.retain {
        retain_values(retain)?;
    }
    pod.env.extend([
        value_env("FORGET_OPTIONS", &forget_options(r.retain.as_ref())),
        value_env("DATA_DIR", DATA_MOUNT),
        value_env("RESTIC_CACHE_DIR", CACHE_MOUNT),
        secret_env(repo, "RESTIC_REPOSITORY", false),
        secret_env(repo, "RESTIC_PASSWORD", false),
    ]);
    pod.env.extend(
        RESTIC_OPTIONAL_KEYS
            .iter()
            .map(|k| secret_env(repo, k, true)),
    );
    rclone_keys_env(pod, repo, input.secret_keys, &[]);
    pod.data(data, false)?;
    pod.mount(
        "cache",
        CACHE_MOUNT,
        Volume {
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names::cache_name(input.run.source),
                read_only: None,
            }),
            ..Default::default()
        },
    );
    custom_ca(pod, "restic.customCA", r.custom_ca.as_ref())?;
    if input.secret_keys.contains(GCS_CREDENTIALS_KEY) {
        pod.env.push(value_env(
            GCS_CREDENTIALS_KEY,
            &format!("{GCS_CREDENTIALS_DIR}/{GCS_CREDENTIALS_FILE}"),
        ));
        pod.mount(
            "gcs-credentials",
            GCS_CREDENTIALS_DIR,
            Volume {
                secret: Some(SecretVolumeSource {
                    secret_name: Some(repo.to_owned()),
                    items: Some(vec![KeyToPath {
                        key: GCS_CREDENTIALS_KEY.to_owned(),
                        path: GCS_CREDENTIALS_FILE.to_owned(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    }
    Ok(())
}

/// The free-form values of a retain policy go into `FORGET_OPTIONS`, which the mover splits
/// into restic's arguments: only what restic reads as a duration or a count is passed on.
fn retain_values(retain: &v1::ResticRetainPolicy) -> Result<(), SpecError> {
    if let Some(w) = &retain.within {
        // restic's duration: numbers with y, m, d, h units, e.g. `1y6m3d12h`.
        let mut digits = 0usize;
        let mut units = 0usize;
        for c in w.chars() {
            match c {
                '0'..='9' => digits = digits.saturating_add(1),
                'y' | 'm' | 'd' | 'h' if digits > 0 => {
                    digits = 0;
                    units = units.saturating_add(1);
                }
                _ => {
                    units = 0;
                    break;
                }
            }
        }
        if units == 0 || digits != 0 || w.len() > MAX_RETAIN_LEN {
            return Err(SpecError::invalid(
                "restic.retain.within",
                format!(
                    "{} is not a restic duration such as 3d12h (at most {MAX_RETAIN_LEN} \
                     characters, MAX_RETAIN_LEN)",
                    crate::bounds::quoted(w)
                ),
            ));
        }
    }
    if let Some(l) = &retain.last
        && (l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) || l.parse::<i32>().is_err())
    {
        return Err(SpecError::invalid(
            "restic.retain.last",
            format!(
                "{} is not a non-negative integer up to {} such as \"10\"",
                crate::bounds::quoted(l),
                i32::MAX
            ),
        ));
    }
    Ok(())
}

fn rclone(
    pod: &mut PodParts,
    r: &v1::ReplicationSourceRcloneSpec,
    input: &MoverJobInput<'_>,
    data: &DataVolume,
) -> Result<(), SpecError> {
    let config = required("rclone.rcloneConfig", &r.rclone_config)?;
    let section = required("rclone.rcloneConfigSection", &r.rclone_config_section)?;
    let dest = required("rclone.rcloneDestPath", &r.rclone_dest_path)?;
    const FIXED: [&str; 3] = ["RCLONE_CONFIG", "RCLONE_DEST_PATH", "RCLONE_CONFIG_SECTION"];
    rclone_keys_env(pod, config, input.secret_keys, &FIXED);
    pod.env.extend([
        value_env(
            "RCLONE_CONFIG",
            &format!("{RCLONE_CONFIG_MOUNT}rclone.conf"),
        ),
        value_env("RCLONE_DEST_PATH", dest),
        value_env("DIRECTION", "source"),
        value_env("MOUNT_PATH", DATA_MOUNT),
        value_env("RCLONE_CONFIG_SECTION", section),
    ]);
    pod.data(data, false)?;
    pod.mount("rclone-secret", RCLONE_CONFIG_MOUNT, secret_volume(config));
    custom_ca(pod, "rclone.customCA", r.custom_ca.as_ref())
}

fn rsync(
    pod: &mut PodParts,
    r: &v1::ReplicationSourceRsyncSpec,
    data: &DataVolume,
) -> Result<(), SpecError> {
    let keys = required("rsync.sshKeys", &r.ssh_keys)?;
    let address = required("rsync.address", &r.address)?;
    let port = port("rsync.port", r.port, DEFAULT_RSYNC_PORT)?;
    pod.env.extend([
        value_env("DESTINATION_ADDRESS", address),
        value_env("DESTINATION_PORT", &port.to_string()),
    ]);
    pod.data(data, true)?;
    pod.mount("keys", KEYS_MOUNT, secret_volume(keys));
    pod.mount("tempsshdir", "/root/.ssh", memory_dir());
    Ok(())
}

fn rsync_tls(
    pod: &mut PodParts,
    r: &v1::ReplicationSourceRsyncTlsSpec,
    data: &DataVolume,
) -> Result<(), SpecError> {
    let keys = required("rsyncTLS.keySecret", &r.key_secret)?;
    let address = required("rsyncTLS.address", &r.address)?;
    let port = port("rsyncTLS.port", r.port, DEFAULT_RSYNC_TLS_PORT)?;
    pod.env.extend([
        value_env("DESTINATION_ADDRESS", address),
        value_env("DESTINATION_PORT", &port.to_string()),
    ]);
    pod.data(data, true)?;
    pod.mount("keys", KEYS_MOUNT, secret_volume(keys));
    Ok(())
}

/// `RCLONE_*` keys of the secret as optional env, sorted, skipping names the mover sets itself.
fn rclone_keys_env(pod: &mut PodParts, secret: &str, keys: &BTreeSet<String>, skip: &[&str]) {
    pod.env.extend(
        keys.iter()
            .filter(|k| k.starts_with("RCLONE_") && !skip.contains(&k.as_str()))
            .map(|k| secret_env(secret, k, true)),
    );
}

fn custom_ca(pod: &mut PodParts, field: &str, ca: Option<&v1::CustomCa>) -> Result<(), SpecError> {
    let Some(ca) = ca else { return Ok(()) };
    let items = || {
        Some(vec![KeyToPath {
            key: ca.key.clone(),
            path: CUSTOM_CA_FILE.to_owned(),
            ..Default::default()
        }])
    };
    let volume = match (ca.secret_name.as_str(), ca.config_map_name.as_str()) {
        ("", "") if ca.key.is_empty() => return Ok(()),
        ("", "") => return Err(SpecError::missing(format!("{field}.secretName"))),
        (s, "") => Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some(s.to_owned()),
                items: items(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ("", c) => Volume {
            config_map: Some(ConfigMapVolumeSource {
                name: c.to_owned(),
                items: items(),
                ..Default::default()
            }),
            ..Default::default()
        },
        _ => {
            return Err(SpecError::invalid(
                field,
                "set either secretName or configMapName, not both",
            ));
        }
    };
    if ca.key.is_empty() {
        return Err(SpecError::missing(format!("{field}.key")));
    }
    pod.env.push(value_env(
        "CUSTOM_CA",
        &format!("{CUSTOM_CA_MOUNT}/{CUSTOM_CA_FILE}"),
    ));
    pod.mount("custom-ca", CUSTOM_CA_MOUNT, volume);
    Ok(())
}

/// `moverVolumes`: each a PVC, Secret or NFS volume mounted at `/mnt/<mountPath>`.
fn mover_volumes(pod: &mut PodParts, o: &VolumeOptions<'_>) -> Result<(), SpecError> {
    const KINDS: [&str; 3] = ["persistentVolumeClaim", "secret", "nfs"];
    let mut seen = BTreeSet::new();
    for (i, mv) in o.mover_volumes.iter().enumerate() {
        let field = format!("{}.moverVolumes[{i}]", o.prefix);
        let path = mv.mount_path.trim_matches('/');
        let path_ok = !path.is_empty()
            && path
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !path_ok {
            return Err(SpecError::invalid(
                format!("{field}.mountPath"),
                format!("{:?} is not a relative path under /mnt", mv.mount_path),
            ));
        }
        if !seen.insert(path.to_owned()) {
            return Err(SpecError::invalid(
                format!("{field}.mountPath"),
                format!("{path:?} is mounted twice"),
            ));
        }
        let source = mv
            .volume_source
            .as_ref()
            .ok_or_else(|| SpecError::missing(format!("{field}.volumeSource")))?;
        let json = crate::spec::struct_to_json(source);
        let kinds: Vec<&String> = json
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        if !matches!(kinds.as_slice(), [kind] if KINDS.contains(&kind.as_str())) {
            return Err(SpecError::invalid(
                format!("{field}.volumeSource"),
                format!("must be exactly one of {}", KINDS.join(", ")),
            ));
        }
        let name = names::dns_label(&format!("mv-{path}"));
        let mut object = json;
        if let Some(m) = object.as_object_mut() {
            m.insert("name".to_owned(), serde_json::Value::String(name.clone()));
        }
        let volume: Volume =
            serde_json::from_value(object).map_err(|source| SpecError::Struct {
                field: format!("{field}.volumeSource"),
                kind: "VolumeSource",
                source,
            })?;
        pod.mount(&name, &format!("/mnt/{path}"), volume);
    }
    Ok(())
}

fn proxy_env(env: &mut Vec<EnvVar>, proxy: &BTreeMap<String, String>) {
    for (upper, lower) in PROXY_VARIABLES {
        if let Some(v) = proxy.get(upper).or_else(|| proxy.get(lower)) {
            env.push(value_env(upper, v));
            env.push(value_env(lower, v));
        }
    }
}

fn bash(script: &str) -> Vec<String> {
    vec!["/bin/bash".to_owned(), "-c".to_owned(), script.to_owned()]
}

fn required<'a>(field: &str, v: &'a str) -> Result<&'a str, SpecError> {
    if v.trim().is_empty() {
        Err(SpecError::missing(field))
    } else {
        Ok(v)
    }
}

fn port(field: &str, v: Option<i32>, default: i32) -> Result<i32, SpecError> {
    match v {
        None => Ok(default),
        Some(p) if (1..=65535).contains(&p) => Ok(p),
        Some(p) => Err(SpecError::invalid(
            field,
            format!("{p} is not a port (1-65535)"),
        )),
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn secret_env(secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: key.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(optional),
            }),
            ..Default::default()
        }),
    }
}

fn secret_volume(secret: &str) -> Volume {
    Volume {
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            default_mode: Some(SECRET_MODE_0600),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn memory_dir() -> Volume {
    Volume {
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    }
}
