//! Each mover Job asserted whole, as the JSON the API server receives, against movers.md; then
//! one test per rule that varies it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::{
    api::core::v1::{PersistentVolumeClaimSpec, PersistentVolumeClaimStatus},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

use super::*;
use crate::spec::tests::to_struct;

const RUN: RunRef<'static> = RunRef {
    namespace: "apps",
    source: "db",
    run_id: "run-7",
};

fn data_pvc(modes: &[&str], block: bool) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("volsync-db-src".into()),
            namespace: Some("apps".into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(modes.iter().map(|m| (*m).to_owned()).collect()),
            volume_mode: Some(if block { "Block" } else { "Filesystem" }.to_owned()),
            ..Default::default()
        }),
        status: None,
    }
}

struct Case {
    spec: v1::SourceSpec,
    paused: bool,
    data: PersistentVolumeClaim,
    privileged: bool,
    proxy: BTreeMap<String, String>,
    keys: BTreeSet<String>,
    restic: ResticActions,
    images: MoverImages,
}

impl Case {
    fn new(spec: v1::SourceSpec) -> Self {
        Self {
            spec,
            paused: false,
            data: data_pvc(&["ReadWriteOnce"], false),
            privileged: false,
            proxy: BTreeMap::new(),
            keys: BTreeSet::new(),
            restic: ResticActions::default(),
            images: MoverImages::default(),
        }
    }

    fn build(&self) -> Result<Job, SpecError> {
        mover_job(&MoverJobInput {
            run: RUN,
            spec: MoverSpec::of(&self.spec).unwrap(),
            paused: self.paused,
            data_pvc: &self.data,
            privileged_movers: self.privileged,
            images: &self.images,
            proxy: &self.proxy,
            secret_keys: &self.keys,
            restic: self.restic,
            mover_account: Some("volsync-src-db"),
        })
    }

    fn json(&self) -> Value {
        serde_json::to_value(self.build().unwrap()).unwrap()
    }
}

fn restic_spec(f: impl FnOnce(&mut v1::ReplicationSourceResticSpec)) -> v1::SourceSpec {
    let mut r = v1::ReplicationSourceResticSpec {
        copy_method: v1::CopyMethod::Snapshot as i32,
        repository: "restic-secret".into(),
        ..Default::default()
    };
    f(&mut r);
    v1::SourceSpec {
        source_pvc: "data".into(),
        restic: Some(r),
        ..Default::default()
    }
}

fn rclone_spec(f: impl FnOnce(&mut v1::ReplicationSourceRcloneSpec)) -> v1::SourceSpec {
    let mut r = v1::ReplicationSourceRcloneSpec {
        copy_method: v1::CopyMethod::Clone as i32,
        rclone_config: "rclone-secret".into(),
        rclone_config_section: "s3".into(),
        rclone_dest_path: "bucket/db".into(),
        ..Default::default()
    };
    f(&mut r);
    v1::SourceSpec {
        source_pvc: "data".into(),
        rclone: Some(r),
        ..Default::default()
    }
}

fn rsync_spec(f: impl FnOnce(&mut v1::ReplicationSourceRsyncSpec)) -> v1::SourceSpec {
    let mut r = v1::ReplicationSourceRsyncSpec {
        copy_method: v1::CopyMethod::Snapshot as i32,
        ssh_keys: "ssh-keys".into(),
        address: "dest.example.com".into(),
        ..Default::default()
    };
    f(&mut r);
    v1::SourceSpec {
        source_pvc: "data".into(),
        rsync: Some(r),
        ..Default::default()
    }
}

fn rsync_tls_spec(f: impl FnOnce(&mut v1::ReplicationSourceRsyncTlsSpec)) -> v1::SourceSpec {
    let mut r = v1::ReplicationSourceRsyncTlsSpec {
        copy_method: v1::CopyMethod::Direct as i32,
        key_secret: "tls-key".into(),
        address: "10.0.0.9".into(),
        ..Default::default()
    };
    f(&mut r);
    v1::SourceSpec {
        source_pvc: "data".into(),
        rsync_tls: Some(r),
        ..Default::default()
    }
}

fn labels() -> Value {
    json!({
        "app.kubernetes.io/created-by": "snapgate",
        "snapgate.io/cleanup": "db",
        "snapgate.io/run": "run-7",
        "snapgate.io/source": "db",
    })
}

fn secret_ref(secret: &str, key: &str, optional: bool) -> Value {
    json!({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}})
}

fn plain_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "privileged": false,
        "readOnlyRootFilesystem": true,
    })
}

fn tmp_volume() -> Value {
    json!({"name": "tempdir", "emptyDir": {"medium": "Memory"}})
}

fn data_volume(claim: &str) -> Value {
    json!({"name": "data", "persistentVolumeClaim": {"claimName": claim}})
}

const IMAGE: &str = "quay.io/backube/volsync:0.14.0";

#[test]
fn the_restic_job_is_exactly_what_the_restic_entry_script_expects() {
    let case = Case::new(restic_spec(|_| {}));
    let mut env = vec![
        json!({"name": "FORGET_OPTIONS", "value": "--keep-last 1"}),
        json!({"name": "DATA_DIR", "value": "/data"}),
        json!({"name": "RESTIC_CACHE_DIR", "value": "/cache"}),
        secret_ref("restic-secret", "RESTIC_REPOSITORY", false),
        secret_ref("restic-secret", "RESTIC_PASSWORD", false),
    ];
    for key in [
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
    ] {
        env.push(secret_ref("restic-secret", key, true));
    }
    env.push(json!({"name": "PRIVILEGED_MOVER", "value": "0"}));
    assert_eq!(
        case.json(),
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "volsync-src-db", "namespace": "apps", "labels": labels()},
            "spec": {
                "backoffLimit": 8,
                "parallelism": 1,
                "template": {
                    "metadata": {"labels": labels()},
                    "spec": {
                        "automountServiceAccountToken": false,
                        "serviceAccountName": "volsync-src-db",
                        "containers": [{
                            "name": "restic",
                            "image": IMAGE,
                            "command": ["/mover-restic/entry.sh"],
                            "args": ["backup"],
                            "env": env,
                            "securityContext": plain_security(),
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/data"},
                                {"name": "cache", "mountPath": "/cache"},
                                {"name": "tempdir", "mountPath": "/tmp"},
                            ],
                        }],
                        "restartPolicy": "Never",
                        "volumes": [
                            data_volume("volsync-db-src"),
                            {"name": "cache", "persistentVolumeClaim": {"claimName": "volsync-src-db-cache"}},
                            tmp_volume(),
                        ],
                    },
                },
            },
        })
    );
}

#[test]
fn the_rclone_job_is_exactly_what_active_sh_expects() {
    let mut case = Case::new(rclone_spec(|_| {}));
    case.keys = BTreeSet::from([
        "rclone.conf".to_owned(),
        "RCLONE_TRANSFERS".to_owned(),
        "RCLONE_CHECKSUM".to_owned(),
        "RCLONE_CONFIG".to_owned(),
    ]);
    assert_eq!(
        case.json(),
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "volsync-rclone-src-db", "namespace": "apps", "labels": labels()},
            "spec": {
                "backoffLimit": 2,
                "parallelism": 1,
                "template": {
                    "metadata": {"labels": labels()},
                    "spec": {
                        "automountServiceAccountToken": false,
                        "serviceAccountName": "volsync-src-db",
                        "containers": [{
                            "name": "rclone",
                            "image": IMAGE,
                            "command": ["/bin/bash", "-c", "/mover-rclone/active.sh"],
                            "env": [
                                secret_ref("rclone-secret", "RCLONE_CHECKSUM", true),
                                secret_ref("rclone-secret", "RCLONE_TRANSFERS", true),
                                {"name": "RCLONE_CONFIG", "value": "/rclone-config/rclone.conf"},
                                {"name": "RCLONE_DEST_PATH", "value": "bucket/db"},
                                {"name": "DIRECTION", "value": "source"},
                                {"name": "MOUNT_PATH", "value": "/data"},
                                {"name": "RCLONE_CONFIG_SECTION", "value": "s3"},
                                {"name": "PRIVILEGED_MOVER", "value": "0"},
                            ],
                            "securityContext": plain_security(),
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/data"},
                                {"name": "rclone-secret", "mountPath": "/rclone-config/"},
                                {"name": "tempdir", "mountPath": "/tmp"},
                            ],
                        }],
                        "restartPolicy": "Never",
                        "volumes": [
                            data_volume("volsync-db-src"),
                            {"name": "rclone-secret", "secret": {"secretName": "rclone-secret", "defaultMode": 384}},
                            tmp_volume(),
                        ],
                    },
                },
            },
        })
    );
}

#[test]
fn the_rsync_job_always_runs_as_root_with_the_ssh_capabilities() {
    for privileged in [false, true] {
        let mut case = Case::new(rsync_spec(|_| {}));
        case.privileged = privileged;
        assert_eq!(
            case.json(),
            json!({
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "volsync-rsync-src-db", "namespace": "apps", "labels": labels()},
                "spec": {
                    "backoffLimit": 2,
                    "parallelism": 1,
                    "template": {
                        "metadata": {"labels": labels()},
                        "spec": {
                            "automountServiceAccountToken": false,
                            "serviceAccountName": "volsync-src-db",
                            "containers": [{
                                "name": "rsync",
                                "image": IMAGE,
                                "command": ["/bin/bash", "-c", "/mover-rsync/source.sh"],
                                "env": [
                                    {"name": "DESTINATION_ADDRESS", "value": "dest.example.com"},
                                    {"name": "DESTINATION_PORT", "value": "22"},
                                ],
                                "securityContext": {
                                    "allowPrivilegeEscalation": false,
                                    "capabilities": {
                                        "add": ["AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID", "SYS_CHROOT"],
                                        "drop": ["ALL"],
                                    },
                                    "privileged": false,
                                    "readOnlyRootFilesystem": true,
                                    "runAsUser": 0,
                                },
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/data"},
                                    {"name": "keys", "mountPath": "/keys"},
                                    {"name": "tempsshdir", "mountPath": "/root/.ssh"},
                                    {"name": "tempdir", "mountPath": "/tmp"},
                                ],
                            }],
                            "restartPolicy": "Never",
                            "volumes": [
                                data_volume("volsync-db-src"),
                                {"name": "keys", "secret": {"secretName": "ssh-keys", "defaultMode": 384}},
                                {"name": "tempsshdir", "emptyDir": {"medium": "Memory"}},
                                tmp_volume(),
                            ],
                        },
                    },
                },
            }),
            "privileged namespace: {privileged}"
        );
    }
}

#[test]
fn the_rsync_tls_job_is_exactly_what_client_sh_expects() {
    let case = Case::new(rsync_tls_spec(|_| {}));
    assert_eq!(
        case.json(),
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "volsync-rsync-tls-src-db", "namespace": "apps", "labels": labels()},
            "spec": {
                "backoffLimit": 2,
                "parallelism": 1,
                "template": {
                    "metadata": {"labels": labels()},
                    "spec": {
                        "automountServiceAccountToken": false,
                        "serviceAccountName": "volsync-src-db",
                        "containers": [{
                            "name": "rsync-tls",
                            "image": IMAGE,
                            "command": ["/bin/bash", "-c", "/mover-rsync-tls/client.sh"],
                            "env": [
                                {"name": "DESTINATION_ADDRESS", "value": "10.0.0.9"},
                                {"name": "DESTINATION_PORT", "value": "8000"},
                                {"name": "PRIVILEGED_MOVER", "value": "0"},
                            ],
                            "securityContext": plain_security(),
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/data"},
                                {"name": "keys", "mountPath": "/keys"},
                                {"name": "tempdir", "mountPath": "/tmp"},
                            ],
                        }],
                        "restartPolicy": "Never",
                        "volumes": [
                            data_volume("volsync-db-src"),
                            {"name": "keys", "secret": {"secretName": "tls-key", "defaultMode": 384}},
                            tmp_volume(),
                        ],
                    },
                },
            },
        })
    );
}

fn container(job: &Value) -> &Value {
    &job["spec"]["template"]["spec"]["containers"][0]
}

fn env_value<'a>(job: &'a Value, name: &str) -> Option<&'a Value> {
    container(job)["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

#[test]
fn a_privileged_namespace_adds_volsyncs_capabilities_and_root_except_for_rsync_which_always_has_them()
 {
    let cases = [
        (
            restic_spec(|_| {}),
            json!(["DAC_OVERRIDE", "CHOWN", "FOWNER"]),
        ),
        (
            rclone_spec(|_| {}),
            json!(["DAC_OVERRIDE", "CHOWN", "FOWNER"]),
        ),
        (
            rsync_tls_spec(|_| {}),
            json!(["DAC_OVERRIDE", "CHOWN", "FOWNER", "SETGID"]),
        ),
    ];
    for (spec, caps) in cases {
        let mut case = Case::new(spec);
        case.privileged = true;
        let job = case.json();
        let sc = &container(&job)["securityContext"];
        assert_eq!(
            *sc,
            json!({
                "allowPrivilegeEscalation": false,
                "capabilities": {"add": caps, "drop": ["ALL"]},
                "privileged": false,
                "readOnlyRootFilesystem": true,
                "runAsUser": 0,
            })
        );
        assert_eq!(
            env_value(&job, "PRIVILEGED_MOVER"),
            Some(&json!({"name": "PRIVILEGED_MOVER", "value": "1"}))
        );
    }
    let job = Case::new(rsync_spec(|_| {})).json();
    assert_eq!(
        env_value(&job, "PRIVILEGED_MOVER"),
        None,
        "rsync has no flag"
    );
}

#[test]
fn a_paused_source_gets_parallelism_zero() {
    for spec in [
        restic_spec(|_| {}),
        rclone_spec(|_| {}),
        rsync_spec(|_| {}),
        rsync_tls_spec(|_| {}),
    ] {
        let mut case = Case::new(spec);
        assert_eq!(case.json()["spec"]["parallelism"], 1);
        case.paused = true;
        assert_eq!(case.json()["spec"]["parallelism"], 0);
    }
}

#[test]
fn restic_unlocks_first_and_prunes_last_when_decided() {
    let cases = [
        (false, false, json!(["backup"])),
        (true, false, json!(["unlock", "backup"])),
        (false, true, json!(["backup", "prune"])),
        (true, true, json!(["unlock", "backup", "prune"])),
    ];
    for (unlock, prune, want) in cases {
        let mut case = Case::new(restic_spec(|_| {}));
        case.restic = ResticActions { unlock, prune };
        assert_eq!(container(&case.json())["args"], want);
    }
}

#[test]
fn forget_options_follow_the_retain_policy_in_volsync_order() {
    let cases = [
        (None, "--keep-last 1"),
        (Some(v1::ResticRetainPolicy::default()), "--keep-last 1"),
        (
            Some(v1::ResticRetainPolicy {
                hourly: Some(6),
                daily: Some(5),
                weekly: Some(4),
                monthly: Some(3),
                yearly: Some(2),
                within: Some("3d4h".into()),
                last: Some("10".into()),
                ..Default::default()
            }),
            "--keep-hourly 6 --keep-daily 5 --keep-weekly 4 --keep-monthly 3 --keep-yearly 2 --keep-within 3d4h --keep-last 10",
        ),
        (
            Some(v1::ResticRetainPolicy {
                daily: Some(7),
                ..Default::default()
            }),
            "--keep-daily 7",
        ),
    ];
    for (retain, want) in cases {
        assert_eq!(forget_options(retain.as_ref()), want);
        let case = Case::new(restic_spec(|r| r.retain = retain.clone()));
        assert_eq!(
            env_value(&case.json(), "FORGET_OPTIONS").unwrap()["value"],
            want
        );
    }
}

#[test]
fn restic_passes_rclone_keys_and_mounts_gcs_credentials_from_the_secret() {
    let mut case = Case::new(restic_spec(|_| {}));
    case.keys = BTreeSet::from([
        "RESTIC_REPOSITORY".to_owned(),
        "RESTIC_PASSWORD".to_owned(),
        "RCLONE_CONFIG_MYS3_TYPE".to_owned(),
        "GOOGLE_APPLICATION_CREDENTIALS".to_owned(),
    ]);
    let job = case.json();
    assert_eq!(
        env_value(&job, "RCLONE_CONFIG_MYS3_TYPE"),
        Some(&secret_ref(
            "restic-secret",
            "RCLONE_CONFIG_MYS3_TYPE",
            true
        ))
    );
    assert_eq!(
        env_value(&job, "GOOGLE_APPLICATION_CREDENTIALS"),
        Some(&json!({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/credentials/gcs.json"}))
    );
    let mounts = container(&job)["volumeMounts"].as_array().unwrap();
    assert!(mounts.contains(&json!({"name": "gcs-credentials", "mountPath": "/credentials"})));
    let volumes = job["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(volumes.contains(&json!({
        "name": "gcs-credentials",
        "secret": {"secretName": "restic-secret", "items": [{"key": "GOOGLE_APPLICATION_CREDENTIALS", "path": "gcs.json"}]},
    })));
}

#[test]
fn a_custom_ca_from_a_secret_or_config_map_is_mounted_and_named_in_custom_ca() {
    let cases = [
        (
            v1::CustomCa {
                secret_name: "ca-secret".into(),
                config_map_name: String::new(),
                key: "bundle.pem".into(),
            },
            json!({"name": "custom-ca", "secret": {"secretName": "ca-secret", "items": [{"key": "bundle.pem", "path": "ca.crt"}]}}),
        ),
        (
            v1::CustomCa {
                secret_name: String::new(),
                config_map_name: "ca-cm".into(),
                key: "ca.pem".into(),
            },
            json!({"name": "custom-ca", "configMap": {"name": "ca-cm", "items": [{"key": "ca.pem", "path": "ca.crt"}]}}),
        ),
    ];
    for (ca, volume) in cases {
        for spec in [
            restic_spec(|r| r.custom_ca = Some(ca.clone())),
            rclone_spec(|r| r.custom_ca = Some(ca.clone())),
        ] {
            let job = Case::new(spec).json();
            assert_eq!(
                env_value(&job, "CUSTOM_CA"),
                Some(&json!({"name": "CUSTOM_CA", "value": "/customCA/ca.crt"}))
            );
            let mounts = container(&job)["volumeMounts"].as_array().unwrap();
            assert!(mounts.contains(&json!({"name": "custom-ca", "mountPath": "/customCA"})));
            let volumes = job["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .unwrap();
            assert!(volumes.contains(&volume), "{volumes:?}");
        }
    }
    let empty = Case::new(restic_spec(|r| r.custom_ca = Some(Default::default()))).json();
    assert_eq!(env_value(&empty, "CUSTOM_CA"), None);
}

#[test]
fn the_data_volume_is_read_only_only_for_exactly_read_only_many() {
    let cases: [(&[&str], bool); 4] = [
        (&["ReadOnlyMany"], true),
        (&["ReadWriteOnce"], false),
        (&["ReadOnlyMany", "ReadWriteMany"], false),
        (&[], false),
    ];
    for (modes, read_only) in cases {
        let mut case = Case::new(restic_spec(|_| {}));
        case.data = data_pvc(modes, false);
        let job = case.json();
        let volume = &job["spec"]["template"]["spec"]["volumes"][0];
        let mount = &container(&job)["volumeMounts"][0];
        if read_only {
            assert_eq!(volume["persistentVolumeClaim"]["readOnly"], true);
            assert_eq!(
                *mount,
                json!({"name": "data", "mountPath": "/data", "readOnly": true})
            );
        } else {
            assert_eq!(*volume, data_volume("volsync-db-src"), "{modes:?}");
            assert_eq!(*mount, json!({"name": "data", "mountPath": "/data"}));
        }
    }
    // The bound status wins over the spec, as in VolSync.
    let mut case = Case::new(restic_spec(|_| {}));
    case.data = data_pvc(&["ReadWriteOnce"], false);
    case.data.status = Some(PersistentVolumeClaimStatus {
        access_modes: Some(vec!["ReadOnlyMany".into()]),
        ..Default::default()
    });
    assert_eq!(
        case.json()["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["readOnly"],
        true
    );
}

#[test]
fn block_volumes_are_attached_as_dev_block_for_rsync_movers_and_refused_by_the_others() {
    for (spec, name) in [
        (rsync_spec(|_| {}), "rsync"),
        (rsync_tls_spec(|_| {}), "rsync-tls"),
    ] {
        let mut case = Case::new(spec);
        case.data = data_pvc(&["ReadWriteOnce"], true);
        let job = case.json();
        let c = container(&job);
        assert_eq!(c["name"], name);
        assert_eq!(
            c["volumeDevices"],
            json!([{"name": "data", "devicePath": "/dev/block"}])
        );
        assert!(
            !c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "data")
        );
        assert_eq!(
            job["spec"]["template"]["spec"]["volumes"][0],
            data_volume("volsync-db-src")
        );
    }
    for spec in [restic_spec(|_| {}), rclone_spec(|_| {})] {
        let mut case = Case::new(spec);
        case.data = data_pvc(&["ReadWriteOnce"], true);
        let err = case.build().unwrap_err();
        assert_eq!(
            err.to_string(),
            "sourcePVC is invalid: block-mode volumes can be moved only by rsync and rsyncTLS"
        );
    }
}

#[test]
fn rsync_over_ssh_runs_as_root_whatever_mover_security_context_says() {
    let context = || {
        Some(to_struct(json!({
            "runAsUser": 1000, "runAsNonRoot": true, "fsGroup": 1000,
        })))
    };
    let job = Case::new(rsync_spec(|r| r.mover_security_context = context())).json();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod.get("securityContext"), None, "{pod:#}");
    assert_eq!(container(&job)["securityContext"]["runAsUser"], json!(0));
    // The other movers apply it.
    let job = Case::new(rsync_tls_spec(|r| r.mover_security_context = context())).json();
    assert_eq!(
        job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        json!(true)
    );
    // A context that is not one is still refused, as for every mover.
    let bad =
        rsync_spec(|r| r.mover_security_context = Some(to_struct(json!({"runAsUser": "root"}))));
    assert!(Case::new(bad).build().is_err());
}

#[test]
fn mover_config_security_context_resources_affinity_labels_and_service_account_are_honoured() {
    let spec = rclone_spec(|r| {
        r.mover_security_context = Some(to_struct(json!({
            "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "runAsNonRoot": true,
        })));
        r.mover_resources = Some(to_struct(json!({
            "limits": {"memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "256Mi"},
        })));
        r.mover_affinity = Some(to_struct(json!({
            "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {"app": "db"}},
                "topologyKey": "kubernetes.io/hostname",
            }]},
        })));
        r.mover_pod_labels = HashMap::from([
            ("team".to_owned(), "storage".to_owned()),
            ("snapgate.io/source".to_owned(), "spoofed".to_owned()),
        ]);
        r.mover_service_account = Some("mover-sa".into());
    });
    let job = Case::new(spec).json();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"],
        json!({"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "runAsNonRoot": true})
    );
    assert_eq!(
        container(&job)["resources"],
        json!({"limits": {"memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "256Mi"}})
    );
    assert_eq!(
        pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(pod["serviceAccountName"], "mover-sa");
    assert!(
        pod.get("automountServiceAccountToken").is_none(),
        "the user's service account keeps its token"
    );
    let mut want = labels();
    want["team"] = json!("storage");
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"], want,
        "ours win"
    );
    assert_eq!(
        job["metadata"]["labels"],
        labels(),
        "pod labels stay on the pod"
    );
}

#[test]
fn mover_config_that_is_not_the_kubernetes_type_is_refused_naming_the_field() {
    let cases = [
        (
            restic_spec(|r| {
                r.mover_security_context = Some(to_struct(json!({"runAsUser": "root"})))
            }),
            "restic.moverSecurityContext is not a valid PodSecurityContext",
        ),
        (
            rsync_spec(|r| r.mover_resources = Some(to_struct(json!({"limits": 5})))),
            "rsync.moverResources is not a valid ResourceRequirements",
        ),
        (
            rsync_tls_spec(|r| r.mover_affinity = Some(to_struct(json!({"nodeAffinity": []})))),
            "rsyncTLS.moverAffinity is not a valid Affinity",
        ),
    ];
    for (spec, want) in cases {
        let err = Case::new(spec).build().unwrap_err();
        assert!(err.to_string().starts_with(want), "{err}");
    }
}

#[test]
fn mover_volumes_are_mounted_under_mnt() {
    let spec = restic_spec(|r| {
        r.mover_volumes = vec![
            v1::MoverVolume {
                mount_path: "extra".into(),
                volume_source: Some(to_struct(
                    json!({"persistentVolumeClaim": {"claimName": "extra-pvc", "readOnly": true}}),
                )),
            },
            v1::MoverVolume {
                mount_path: "certs/client".into(),
                volume_source: Some(to_struct(
                    json!({"secret": {"secretName": "client-cert", "defaultMode": 256}}),
                )),
            },
        ];
    });
    let job = Case::new(spec).json();
    let mounts = container(&job)["volumeMounts"].as_array().unwrap();
    assert_eq!(
        mounts[mounts.len() - 2..],
        [
            json!({"name": "mv-extra", "mountPath": "/mnt/extra"}),
            json!({"name": "mv-certs-client-29db03e0a2", "mountPath": "/mnt/certs/client"}),
        ]
    );
    let volumes = job["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert_eq!(
        volumes[volumes.len() - 2..],
        [
            json!({"name": "mv-extra", "persistentVolumeClaim": {"claimName": "extra-pvc", "readOnly": true}}),
            json!({"name": "mv-certs-client-29db03e0a2", "secret": {"secretName": "client-cert", "defaultMode": 256}}),
        ]
    );
}

#[test]
fn bad_mover_volumes_are_refused_naming_the_field() {
    let mv = |path: &str, source: Option<Value>| v1::MoverVolume {
        mount_path: path.into(),
        volume_source: source.map(to_struct),
    };
    let pvc = || Some(json!({"persistentVolumeClaim": {"claimName": "x"}}));
    let cases = [
        (
            vec![mv("", pvc())],
            "rclone.moverVolumes[0].mountPath is invalid",
        ),
        (
            vec![mv("../etc", pvc())],
            "rclone.moverVolumes[0].mountPath is invalid",
        ),
        (
            vec![mv("a", pvc()), mv("a/", pvc())],
            "rclone.moverVolumes[1].mountPath is invalid: \"a\" is mounted twice",
        ),
        (
            vec![mv("a", None)],
            "rclone.moverVolumes[0].volumeSource is required",
        ),
        (
            vec![mv("a", Some(json!({"hostPath": {"path": "/"}})))],
            "rclone.moverVolumes[0].volumeSource is invalid: must be exactly one of persistentVolumeClaim, secret, nfs",
        ),
        (
            vec![mv(
                "a",
                Some(json!({"secret": {"secretName": "s"}, "nfs": {"server": "n", "path": "/"}})),
            )],
            "rclone.moverVolumes[0].volumeSource is invalid",
        ),
        (
            vec![mv("a", Some(json!({"nfs": {"server": 1}})))],
            "rclone.moverVolumes[0].volumeSource is not a valid VolumeSource",
        ),
    ];
    for (volumes, want) in cases {
        let spec = rclone_spec(|r| r.mover_volumes = volumes);
        let err = Case::new(spec).build().unwrap_err();
        assert!(err.to_string().starts_with(want), "{err}");
    }
}

#[test]
fn proxy_variables_are_passed_in_both_cases() {
    let mut case = Case::new(rsync_tls_spec(|_| {}));
    case.proxy = BTreeMap::from([
        ("HTTPS_PROXY".to_owned(), "http://proxy:3128".to_owned()),
        ("no_proxy".to_owned(), ".svc,.cluster.local".to_owned()),
        ("UNRELATED".to_owned(), "x".to_owned()),
    ]);
    assert_eq!(
        container(&case.json())["env"],
        json!([
            {"name": "DESTINATION_ADDRESS", "value": "10.0.0.9"},
            {"name": "DESTINATION_PORT", "value": "8000"},
            {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
            {"name": "https_proxy", "value": "http://proxy:3128"},
            {"name": "NO_PROXY", "value": ".svc,.cluster.local"},
            {"name": "no_proxy", "value": ".svc,.cluster.local"},
            {"name": "PRIVILEGED_MOVER", "value": "0"},
        ])
    );
}

#[test]
fn ports_default_per_mover_and_can_be_set() {
    let cases = [
        (rsync_spec(|r| r.port = Some(2222)), "2222"),
        (rsync_tls_spec(|r| r.port = Some(8443)), "8443"),
        (rsync_spec(|_| {}), "22"),
        (rsync_tls_spec(|_| {}), "8000"),
    ];
    for (spec, want) in cases {
        let job = Case::new(spec).json();
        assert_eq!(env_value(&job, "DESTINATION_PORT").unwrap()["value"], want);
    }
}

#[test]
fn missing_or_bad_mover_settings_are_refused_naming_the_field() {
    let cases = [
        (
            restic_spec(|r| r.repository.clear()),
            "restic.repository is required",
        ),
        (
            rclone_spec(|r| r.rclone_config.clear()),
            "rclone.rcloneConfig is required",
        ),
        (
            rclone_spec(|r| r.rclone_config_section.clear()),
            "rclone.rcloneConfigSection is required",
        ),
        (
            rclone_spec(|r| r.rclone_dest_path.clear()),
            "rclone.rcloneDestPath is required",
        ),
        (
            rsync_spec(|r| r.ssh_keys.clear()),
            "rsync.sshKeys is required",
        ),
        (
            rsync_spec(|r| r.address.clear()),
            "rsync.address is required",
        ),
        (
            rsync_spec(|r| r.port = Some(0)),
            "rsync.port is invalid: 0 is not a port (1-65535)",
        ),
        (
            rsync_tls_spec(|r| r.key_secret.clear()),
            "rsyncTLS.keySecret is required",
        ),
        (
            rsync_tls_spec(|r| r.address.clear()),
            "rsyncTLS.address is required",
        ),
        (
            rsync_tls_spec(|r| r.port = Some(70000)),
            "rsyncTLS.port is invalid: 70000 is not a port (1-65535)",
        ),
        (
            restic_spec(|r| {
                r.custom_ca = Some(v1::CustomCa {
                    key: "ca.pem".into(),
                    ..Default::default()
                })
            }),
            "restic.customCA.secretName is required",
        ),
        (
            rclone_spec(|r| {
                r.custom_ca = Some(v1::CustomCa {
                    secret_name: "s".into(),
                    ..Default::default()
                })
            }),
            "rclone.customCA.key is required",
        ),
        (
            rclone_spec(|r| {
                r.custom_ca = Some(v1::CustomCa {
                    secret_name: "s".into(),
                    config_map_name: "c".into(),
                    key: "k".into(),
                })
            }),
            "rclone.customCA is invalid: set either secretName or configMapName, not both",
        ),
    ];
    for (spec, want) in cases {
        let err = Case::new(spec).build().unwrap_err();
        assert_eq!(err.to_string(), want);
    }
}

#[test]
fn a_long_source_name_shortens_the_job_name_and_hashes_nothing_else() {
    let source = "a-very-long-source-name-that-goes-on-and-on-and-on";
    let spec = rsync_tls_spec(|_| {});
    let data = data_pvc(&["ReadWriteOnce"], false);
    let job = mover_job(&MoverJobInput {
        run: RunRef {
            namespace: "apps",
            source,
            run_id: "run-7",
        },
        spec: MoverSpec::of(&spec).unwrap(),
        paused: false,
        data_pvc: &data,
        privileged_movers: false,
        images: &MoverImages::default(),
        proxy: &BTreeMap::new(),
        secret_keys: &BTreeSet::new(),
        restic: ResticActions::default(),
        mover_account: None,
    })
    .unwrap();
    let name = job.metadata.name.unwrap();
    assert_eq!(name.len(), 63);
    assert!(name.starts_with("volsync-rsync-tls-src-a-very-long-source-name-that-"));
    assert!(names::is_dns_label(&name));
    assert_eq!(name, names::job_name(Mover::RsyncTls, source));
    let l = job.metadata.labels.unwrap();
    assert_eq!(l["snapgate.io/source"], source, "a 50-character value fits");
}

#[test]
fn images_come_from_the_configured_set_and_default_to_a_pinned_release() {
    let images = MoverImages::default();
    for m in [Mover::Restic, Mover::Rclone, Mover::Rsync, Mover::RsyncTls] {
        assert_eq!(images.image(m), "quay.io/backube/volsync:0.14.0");
    }
    let mut case = Case::new(rclone_spec(|_| {}));
    case.images.rclone = "registry.example/volsync:0.14.0@sha256:abc".into();
    assert_eq!(
        container(&case.json())["image"],
        "registry.example/volsync:0.14.0@sha256:abc"
    );
}

#[test]
fn only_a_restic_duration_and_a_count_reach_forget_options() {
    let retain = |within: Option<&str>, last: Option<&str>| {
        restic_spec(|r| {
            r.retain = Some(v1::ResticRetainPolicy {
                within: within.map(str::to_owned),
                last: last.map(str::to_owned),
                ..Default::default()
            });
        })
    };
    for (within, last) in [(Some("1y6m3d12h"), Some("10")), (None, Some("0"))] {
        assert!(
            Case::new(retain(within, last)).build().is_ok(),
            "{within:?} {last:?}"
        );
    }
    let cases = [
        (
            Some("3d --keep-last 0"),
            None,
            "restic.retain.within is invalid",
        ),
        (Some("forever"), None, "restic.retain.within is invalid"),
        (Some("3d12"), None, "restic.retain.within is invalid"),
        (Some(""), None, "restic.retain.within is invalid"),
        (
            Some(&*"1d".repeat(40)),
            None,
            "restic.retain.within is invalid",
        ),
        (None, Some("10 --prune"), "restic.retain.last is invalid"),
        (None, Some("-1"), "restic.retain.last is invalid"),
        (None, Some(""), "restic.retain.last is invalid"),
        (None, Some("2147483648"), "restic.retain.last is invalid"),
        (None, Some("1\u{202E}"), "restic.retain.last is invalid"),
    ];
    for (within, last, want) in cases {
        let err = Case::new(retain(within, last)).build().unwrap_err();
        assert!(err.to_string().starts_with(want), "{err}");
    }
}
