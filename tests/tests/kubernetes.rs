//! `deploy/kubernetes/`, offline: every manifest validated against the Kubernetes API
//! schemas (`kubernetes-validate --strict`, from PyPI, into a venv under the target
//! directory), the ServiceMonitor (a CRD, which those schemas do not have) by a check of its
//! own, and the DaemonSet held to what the agent needs and to the systemd unit: the same
//! capabilities and memory bound (read from `deploy/why502.service`, not copied), its
//! entry point run for real to render the ConfigMap's template into a configuration that
//! the real `why502 agent --check-config` accepts, with the socket, store and metrics port
//! the probes, mounts and Service expect.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde_json::Value;
use why502_e2e::{prometheus::deploy_dir, python, python::Venv, sibling_binary};

/// Pinned: its schemas are what "valid" means here, and a new release must not change that
/// silently.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The oldest Kubernetes the DaemonSet supports (securityContext.appArmorProfile is 1.30's)
/// and the newest that kubernetes-validate 1.37.0 has schemas of.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Not in the Kubernetes schemas: checked by `service_monitor_selects_the_metrics_service`.
const SERVICE_MONITOR: &str = "servicemonitor.yaml";
/// kustomize's, not an API object: checked to list every manifest.
const KUSTOMIZATION: &str = "kustomization.yaml";

/// The pod's capabilities beyond the systemd unit's, for what systemd does for the unit:
/// SYS_ADMIN mounts tracefs where the node has not (the unit has sys-kernel-tracing.mount),
/// SYS_RESOURCE raises RLIMIT_MEMLOCK for kernels before 5.11 (the unit's
/// LimitMEMLOCK=infinity; a pod gets the runtime's limit), and NET_ADMIN reads conntrack
/// (the pods behind a ClusterIP: on a node, the common case; the unit leaves it to a
/// drop-in).
const POD_ONLY_CAPABILITIES: [&str; 3] = ["SYS_ADMIN", "SYS_RESOURCE", "NET_ADMIN"];

fn venv() -> &'static Venv {
    static VENV: OnceLock<Venv> = OnceLock::new();
    VENV.get_or_init(|| {
        Venv::with(
            &Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-venv"),
            &[KUBERNETES_VALIDATE],
        )
    })
}

fn dir() -> PathBuf {
    deploy_dir("kubernetes")
}

/// The `*.yaml` files of deploy/kubernetes/, by name.
fn yaml_files() -> BTreeSet<String> {
    std::fs::read_dir(dir())
        .expect("deploy/kubernetes/")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect()
}

/// Every API object of deploy/kubernetes/ (the kustomization left out), keyed by
/// `Kind/name`.
fn objects() -> &'static BTreeMap<String, Value> {
    static OBJECTS: OnceLock<BTreeMap<String, Value>> = OnceLock::new();
    OBJECTS.get_or_init(|| {
        let mut objects = BTreeMap::new();
        for name in yaml_files().iter().filter(|name| *name != KUSTOMIZATION) {
            for doc in venv().yaml_documents(&dir().join(name)) {
                let key = format!(
                    "{}/{}",
                    str_at(&doc, "/kind"),
                    str_at(&doc, "/metadata/name")
                );
                assert!(
                    objects.insert(key.clone(), doc).is_none(),
                    "{key} is defined twice"
                );
            }
        }
        objects
    })
}

fn object(key: &str) -> &'static Value {
    objects()
        .get(key)
        .unwrap_or_else(|| panic!("deploy/kubernetes/ has no {key}"))
}

fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in {value:#}"))
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    at(value, pointer)
        .as_str()
        .unwrap_or_else(|| panic!("{pointer} is not a string: {}", at(value, pointer)))
}

fn array_at<'a>(value: &'a Value, pointer: &str) -> &'a Vec<Value> {
    at(value, pointer)
        .as_array()
        .unwrap_or_else(|| panic!("{pointer} is not a list: {}", at(value, pointer)))
}

fn strings(values: &[Value]) -> Vec<&str> {
    values
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .collect()
}

fn daemonset() -> &'static Value {
    object("DaemonSet/why502")
}

fn pod_spec() -> &'static Value {
    at(daemonset(), "/spec/template/spec")
}

fn container() -> &'static Value {
    let containers = array_at(pod_spec(), "/containers");
    assert_eq!(containers.len(), 1, "one container: the agent");
    &containers[0]
}

/// The container's volume mounts, by mount path, each with its volume.
fn mounts() -> BTreeMap<String, (&'static Value, &'static Value)> {
    let volumes: BTreeMap<&str, &Value> = array_at(pod_spec(), "/volumes")
        .iter()
        .map(|v| (str_at(v, "/name"), v))
        .collect();
    let mut mounts = BTreeMap::new();
    for mount in array_at(container(), "/volumeMounts") {
        let name = str_at(mount, "/name");
        let volume = volumes
            .get(name)
            .unwrap_or_else(|| panic!("volume mount {name} has no volume"));
        mounts.insert(str_at(mount, "/mountPath").to_string(), (mount, *volume));
    }
    let mounted: BTreeSet<&str> = mounts.values().map(|(m, _)| str_at(m, "/name")).collect();
    for name in volumes.keys() {
        assert!(mounted.contains(name), "volume {name} is never mounted");
    }
    mounts
}

/// The mount that holds `path` (the longest mount path that is a prefix of it).
fn mount_of(path: &str) -> (&'static Value, &'static Value) {
    mounts()
        .into_iter()
        .filter(|(dir, _)| Path::new(path).starts_with(dir))
        .max_by_key(|(dir, _)| dir.len())
        .map(|(_, mount)| mount)
        .unwrap_or_else(|| panic!("{path} is on no volume (the root file system is read-only)"))
}

fn is_read_only(mount: &Value) -> bool {
    mount.get("readOnly").and_then(Value::as_bool) == Some(true)
}

/// The systemd unit's `key=` values, each line's words (repeated keys accumulate, as for
/// CapabilityBoundingSet).
fn unit_values(key: &str) -> Vec<String> {
    let path = deploy_dir("why502.service");
    let text = std::fs::read_to_string(&path).expect("deploy/why502.service");
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with(';'))
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .flat_map(|value| value.split_whitespace().map(String::from))
        .collect()
}

/// A Kubernetes quantity (`256Mi`, `1G`, `512`) in bytes.
fn quantity_bytes(quantity: &str) -> u64 {
    const SUFFIXES: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = quantity.strip_suffix(suffix) {
            return number.parse::<u64>().expect("an integer quantity") * factor;
        }
    }
    quantity.parse().expect("an integer quantity")
}

/// A systemd byte size (`256M`: base 1024, as systemd.resource-control(5) says) in bytes.
fn systemd_bytes(size: &str) -> u64 {
    let (number, factor) = match size.char_indices().last() {
        Some((i, 'K')) => (&size[..i], 1u64 << 10),
        Some((i, 'M')) => (&size[..i], 1 << 20),
        Some((i, 'G')) => (&size[..i], 1 << 30),
        Some((i, 'T')) => (&size[..i], 1 << 40),
        _ => (size, 1),
    };
    number
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("MemoryMax={size}: only an absolute size is compared"))
        * factor
}

#[test]
fn manifests_validate_against_kubernetes_schemas() {
    let files: Vec<String> = yaml_files()
        .into_iter()
        .filter(|name| name != SERVICE_MONITOR && name != KUSTOMIZATION)
        .collect();
    let mut args = vec!["--strict"];
    for version in KUBERNETES_VERSIONS {
        args.extend(["--kubernetes-version", version]);
    }
    args.extend(files.iter().map(String::as_str));
    let dir = dir();
    let out = Command::new(venv().python())
        .args(["-m", "kubernetes_validate"])
        .args(&args)
        .current_dir(&dir)
        .output()
        .expect("run kubernetes-validate");
    let text = python::text(&out);
    assert!(
        out.status.success(),
        "kubernetes-validate {args:?}:\n{text}"
    );
    // A kind it has no schema of is only a WARN, exit 0: every object must have passed.
    for line in text.lines() {
        assert!(
            line.starts_with("INFO ") && line.contains(" passed for resource "),
            "kubernetes-validate said more than that everything passed:\n{text}"
        );
    }
    let documents: usize = files
        .iter()
        .map(|name| venv().yaml_documents(&dir.join(name)).len())
        .sum();
    assert_eq!(
        text.lines().count(),
        documents * KUBERNETES_VERSIONS.len(),
        "every object passed against every version:\n{text}"
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    let kustomization = venv().yaml_documents(&dir().join(KUSTOMIZATION));
    assert_eq!(kustomization.len(), 1);
    let listed: BTreeSet<&str> = strings(array_at(&kustomization[0], "/resources"))
        .into_iter()
        .collect();
    let files = yaml_files();
    let manifests: BTreeSet<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|name| *name != KUSTOMIZATION)
        .collect();
    assert_eq!(listed, manifests, "kustomization.yaml's resources");
}

#[test]
fn daemonset_runs_with_the_systemd_units_capabilities_not_privileged() {
    let spec = pod_spec();
    assert_eq!(at(spec, "/hostPID"), true, "the node's processes");
    assert_eq!(at(spec, "/hostNetwork"), true, "the node's sockets");
    assert_eq!(str_at(spec, "/dnsPolicy"), "ClusterFirstWithHostNet");
    assert!(spec.get("hostIPC").is_none(), "no need for the node's IPC");

    // Nowhere, in no object.
    fn privileged(value: &Value) -> bool {
        match value {
            Value::Object(map) => map
                .iter()
                .any(|(k, v)| (k == "privileged" && v == &Value::Bool(true)) || privileged(v)),
            Value::Array(items) => items.iter().any(privileged),
            _ => false,
        }
    }
    for (key, object) in objects() {
        assert!(!privileged(object), "{key} has privileged: true");
    }

    let security = at(container(), "/securityContext");
    let unit: BTreeSet<String> = unit_values("CapabilityBoundingSet")
        .into_iter()
        .map(|cap| {
            assert!(
                !cap.starts_with('~'),
                "an inverted bounding set: compare by hand"
            );
            cap.strip_prefix("CAP_").unwrap_or(&cap).to_string()
        })
        .collect();
    assert!(
        !unit.is_empty(),
        "deploy/why502.service has a CapabilityBoundingSet"
    );
    let added: BTreeSet<String> = strings(array_at(security, "/capabilities/add"))
        .into_iter()
        .map(String::from)
        .collect();
    let expected: BTreeSet<String> = unit
        .iter()
        .cloned()
        .chain(POD_ONLY_CAPABILITIES.map(String::from))
        .collect();
    assert_eq!(
        added, expected,
        "the container's capabilities are the systemd unit's CapabilityBoundingSet and {POD_ONLY_CAPABILITIES:?}"
    );
    assert_eq!(
        strings(array_at(security, "/capabilities/drop")),
        ["ALL"],
        "the runtime's default capabilities are dropped"
    );
    if unit_values("NoNewPrivileges") == ["yes"] {
        assert_eq!(at(security, "/allowPrivilegeEscalation"), false);
    }
    assert_eq!(at(security, "/readOnlyRootFilesystem"), true);
    assert_eq!(at(security, "/runAsUser"), 0, "root, as under systemd");
    // The capability-conditioned rules of the runtime's profile let the agent's syscalls
    // through; a regression to Unconfined would drop the whole filter.
    assert_eq!(
        str_at(spec, "/securityContext/seccompProfile/type"),
        "RuntimeDefault"
    );

    let memory_max = unit_values("MemoryMax");
    assert_eq!(
        memory_max.len(),
        1,
        "deploy/why502.service sets MemoryMax once"
    );
    let limits = at(container(), "/resources/limits");
    assert_eq!(
        quantity_bytes(str_at(limits, "/memory")),
        systemd_bytes(&memory_max[0]),
        "the memory limit is the unit's MemoryMax={}",
        memory_max[0]
    );
    let requests = at(container(), "/resources/requests");
    assert!(
        quantity_bytes(str_at(requests, "/memory")) <= quantity_bytes(str_at(limits, "/memory"))
    );
    assert!(requests.get("cpu").is_some(), "a CPU request");
    assert!(
        limits.get("cpu").is_none(),
        "no CPU limit: throttling would stall the event ring's reader"
    );

    assert_eq!(str_at(spec, "/priorityClassName"), "system-node-critical");
    assert!(
        array_at(spec, "/tolerations")
            .iter()
            .any(|t| t.get("operator") == Some(&Value::from("Exists")) && t.get("key").is_none()),
        "tolerates every taint"
    );
    let strategy = at(daemonset(), "/spec/updateStrategy");
    assert_eq!(str_at(strategy, "/type"), "RollingUpdate");
    assert_eq!(at(strategy, "/rollingUpdate/maxUnavailable"), 1);
    let labels = at(daemonset(), "/spec/template/metadata/labels");
    for (key, value) in at(daemonset(), "/spec/selector/matchLabels")
        .as_object()
        .unwrap()
    {
        assert_eq!(
            labels.get(key),
            Some(value),
            "the selector selects the pods"
        );
    }
    assert_eq!(
        str_at(spec, "/serviceAccountName"),
        str_at(object("ServiceAccount/why502"), "/metadata/name")
    );
}

#[test]
fn daemonset_mounts_the_nodes_kernel_file_systems() {
    let mounts = mounts();
    // Read where the agent reads them: each hostPath at its own path.
    for (path, (_, volume)) in &mounts {
        if let Some(host) = volume.get("hostPath") {
            assert_eq!(
                str_at(host, "/path"),
                path,
                "hostPath {path} mounted elsewhere"
            );
            assert!(
                !["/proc", "/", "/sys", "/dev"].contains(&path.as_str()),
                "hostPath {path}: hostPID gives the node's /proc, nothing needs more"
            );
        }
    }
    let host = |path: &str| {
        let (mount, volume) = mounts
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not mounted"));
        assert!(volume.get("hostPath").is_some(), "{path} is the node's");
        (*mount, *volume)
    };
    let (tracefs, _) = host("/sys/kernel/tracing");
    assert!(
        !is_read_only(tracefs),
        "the agent mounts tracefs there where the node has not"
    );
    let (cgroup, _) = host("/sys/fs/cgroup");
    assert!(is_read_only(cgroup), "the agent only reads the cgroup tree");
    let (bpffs, _) = host("/sys/fs/bpf");
    assert!(
        is_read_only(bpffs),
        "the agent pins nothing: other pinned maps stay out of reach"
    );
    for state in ["/var/lib/why502", "/run/why502"] {
        let (mount, volume) = host(state);
        assert!(!is_read_only(mount), "{state} is written");
        assert_eq!(str_at(volume, "/hostPath/type"), "DirectoryOrCreate");
    }
}

/// The container's entry point with its own arguments: `sh -c SCRIPT NAME TEMPLATE OUT`.
fn entry_point() -> (Vec<&'static str>, Vec<&'static str>) {
    let command = strings(array_at(container(), "/command"));
    let args = strings(array_at(container(), "/args"));
    assert_eq!(command[..2], ["/bin/sh", "-c"], "a shell script");
    assert_eq!(
        args.len(),
        3,
        "$0, the template and the rendered configuration"
    );
    (command, args)
}

/// Runs the container's entry point on this host with `NODE_IP=node_ip`, the ConfigMap's
/// template, and a `why502` on PATH that is the real binary with `--check-config` added:
/// its output, and the rendered configuration when it ran.
fn run_entry_point(node_ip: &str) -> (std::process::Output, Option<String>) {
    let (command, args) = entry_point();
    let tmp = tempfile::tempdir().unwrap();
    let template_key = Path::new(args[1]).file_name().unwrap().to_str().unwrap();
    let template = tmp.path().join(template_key);
    let data = at(object("ConfigMap/why502-config"), "/data");
    let text = data
        .get(template_key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("the ConfigMap has no {template_key}"));
    std::fs::write(&template, text).unwrap();
    let rendered = tmp.path().join("rendered.toml");
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let stub = bin.join("why502");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\nexec '{}' \"$@\" --check-config\n",
            sibling_binary("why502").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(command[0])
        .args(&command[1..])
        .arg(args[0])
        .arg(&template)
        .arg(&rendered)
        .env("NODE_IP", node_ip)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .expect("run the entry point");
    (out, std::fs::read_to_string(&rendered).ok())
}

#[test]
fn entry_point_renders_a_configuration_the_agent_accepts() {
    let (_, args) = entry_point();
    // The paths it is given are where the DaemonSet puts them.
    let (template_mount, template_volume) = mount_of(args[1]);
    let config_map = str_at(template_volume, "/configMap/name");
    assert_eq!(
        str_at(object(&format!("ConfigMap/{config_map}")), "/metadata/name"),
        config_map
    );
    assert!(is_read_only(template_mount));
    let (out_mount, out_volume) = mount_of(args[2]);
    assert!(
        !is_read_only(out_mount) && out_volume.get("emptyDir").is_some(),
        "the rendered configuration goes to a writable emptyDir"
    );
    let env = array_at(container(), "/env");
    assert!(
        env.iter()
            .any(|e| e.get("name") == Some(&Value::from("NODE_IP"))
                && e.pointer("/valueFrom/fieldRef/fieldPath")
                    == Some(&Value::from("status.hostIP"))),
        "NODE_IP is the node's IP, from the downward API"
    );

    let metrics_port = array_at(container(), "/ports")
        .iter()
        .find(|p| p.get("name") == Some(&Value::from("metrics")))
        .expect("a port named metrics")
        .get("containerPort")
        .and_then(Value::as_u64)
        .expect("its containerPort");
    let probe_sockets: Vec<&str> = ["startupProbe", "readinessProbe", "livenessProbe"]
        .iter()
        .map(|probe| {
            let command = strings(array_at(container(), &format!("/{probe}/exec/command")));
            assert_eq!(command[..2], ["why502", "status"], "{probe} asks the agent");
            // Explicit, not the CLI's default: the configuration is what it must match.
            command
                .iter()
                .position(|a| *a == "--socket")
                .and_then(|i| command.get(i + 1).copied())
                .unwrap_or_else(|| panic!("{probe} names the socket (--socket)"))
        })
        .collect();

    for (node_ip, listen) in [("10.1.2.3", "10.1.2.3"), ("fd00::7", "[fd00::7]")] {
        let (out, rendered) = run_entry_point(node_ip);
        let text = python::text(&out);
        assert!(out.status.success(), "NODE_IP={node_ip}: {text}");
        assert!(text.contains("the configuration is valid"), "{text}");
        let config: toml::Table = rendered.expect("rendered").parse().expect("TOML");
        let get = |table: &str, key: &str| {
            config[table][key]
                .as_str()
                .unwrap_or_else(|| panic!("{table}.{key}"))
                .to_string()
        };
        assert_eq!(get("metrics", "listen"), format!("{listen}:{metrics_port}"));
        assert_eq!(config["metrics"]["enabled"].as_bool(), Some(true));
        let socket = get("api", "socket");
        for probe_socket in &probe_sockets {
            assert_eq!(*probe_socket, socket, "the probes ask api.socket");
        }
        let (socket_mount, _) = mount_of(&socket);
        assert!(!is_read_only(socket_mount), "the agent creates {socket}");
        let store = get("store", "path");
        let (store_mount, store_volume) = mount_of(&store);
        assert!(
            !is_read_only(store_mount) && store_volume.get("hostPath").is_some(),
            "the store {store} is written, and outlives the pod"
        );
    }

    // Anything but an address is refused before the TOML is written or the agent runs.
    for bad in [
        "",
        "10.0.0.1\"\nlisten = \"0.0.0.0",
        "$(id)",
        "node-1.example",
        "1.2.3.4/x",
    ] {
        let (out, rendered) = run_entry_point(bad);
        assert!(!out.status.success(), "NODE_IP={bad:?} accepted");
        assert!(rendered.is_none(), "NODE_IP={bad:?} rendered");
    }
}

#[test]
fn image_puts_the_binary_where_the_daemonset_runs_it() {
    let path = dir().join("Dockerfile");
    let text = std::fs::read_to_string(&path).expect("deploy/kubernetes/Dockerfile");
    const INSTRUCTIONS: [&str; 18] = [
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
        "MAINTAINER",
    ];
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let mut instructions = Vec::new();
    let mut continued = false;
    for line in lines.by_ref() {
        if !continued {
            let word = line.split_whitespace().next().unwrap();
            assert!(
                INSTRUCTIONS.contains(&word),
                "Dockerfile: {line:?} is no instruction"
            );
            instructions.push(line);
        }
        continued = line.ends_with('\\');
    }
    assert!(
        instructions[0].starts_with("FROM "),
        "Dockerfile starts FROM"
    );
    let copy = instructions
        .iter()
        .find(|l| l.starts_with("COPY ") && l.ends_with("/why502"))
        .expect("COPY of the why502 binary");
    let dest = copy.split_whitespace().last().unwrap();
    // The entry point and the probes run `why502` from PATH: Debian's default one has
    // /usr/local/bin, and the image must not replace it.
    assert_eq!(dest, "/usr/local/bin/why502");
    assert!(!instructions.iter().any(|l| l.starts_with("ENV PATH")));
    let (command, _) = entry_point();
    assert!(
        command[2].contains("exec why502 agent --config \"$2\""),
        "{}",
        command[2]
    );
}

#[test]
fn service_monitor_selects_the_metrics_service() {
    let service = object("Service/why502");
    let monitor = object("ServiceMonitor/why502");
    assert_eq!(str_at(monitor, "/apiVersion"), "monitoring.coreos.com/v1");

    // No schema of the CRD here: the keys the Prometheus Operator knows, so that a typo is
    // not silently ignored (the operator's own schema would reject it at apply time).
    let known = |value: &Value, keys: &[&str], what: &str| {
        for key in value.as_object().unwrap().keys() {
            assert!(keys.contains(&key.as_str()), "{what}: unknown key {key}");
        }
    };
    known(
        monitor,
        &["apiVersion", "kind", "metadata", "spec"],
        "ServiceMonitor",
    );
    let spec = at(monitor, "/spec");
    known(
        spec,
        &[
            "selector",
            "namespaceSelector",
            "endpoints",
            "jobLabel",
            "targetLabels",
            "podTargetLabels",
            "sampleLimit",
            "targetLimit",
            "labelLimit",
        ],
        "ServiceMonitor spec",
    );

    let labels = at(service, "/metadata/labels");
    for (key, value) in at(spec, "/selector/matchLabels").as_object().unwrap() {
        assert_eq!(
            labels.get(key),
            Some(value),
            "the ServiceMonitor selects the Service"
        );
    }
    let service_namespace = str_at(service, "/metadata/namespace");
    assert!(strings(array_at(spec, "/namespaceSelector/matchNames")).contains(&service_namespace));

    let ports = array_at(service, "/spec/ports");
    let port_names: Vec<&str> = ports.iter().map(|p| str_at(p, "/name")).collect();
    let annotations = at(service, "/metadata/annotations");
    let endpoints = array_at(spec, "/endpoints");
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        known(
            endpoint,
            &[
                "port",
                "path",
                "scheme",
                "interval",
                "scrapeTimeout",
                "honorLabels",
                "relabelings",
                "metricRelabelings",
                "params",
                "tlsConfig",
            ],
            "ServiceMonitor endpoint",
        );
        let port = str_at(endpoint, "/port");
        assert!(
            port_names.contains(&port),
            "endpoint port {port} is not the Service's"
        );
        assert_eq!(
            str_at(endpoint, "/path"),
            str_at(annotations, "/prometheus.io~1path")
        );
        for relabel in endpoint
            .get("relabelings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            known(
                relabel,
                &[
                    "sourceLabels",
                    "separator",
                    "targetLabel",
                    "regex",
                    "modulus",
                    "replacement",
                    "action",
                ],
                "relabeling",
            );
        }
    }

    // The Service and its annotations point at the agent's metrics port.
    assert_eq!(str_at(annotations, "/prometheus.io~1scrape"), "true");
    assert_eq!(
        str_at(service, "/spec/clusterIP"),
        "None",
        "headless: one endpoint per node"
    );
    let metrics = ports
        .iter()
        .find(|p| p.get("name") == Some(&Value::from("metrics")))
        .expect("a metrics port");
    assert_eq!(
        str_at(metrics, "/targetPort"),
        "metrics",
        "the container's named port"
    );
    let container_port = array_at(container(), "/ports")
        .iter()
        .find(|p| p.get("name") == Some(&Value::from("metrics")))
        .and_then(|p| p.get("containerPort"))
        .expect("the container's metrics port");
    assert_eq!(at(metrics, "/port"), container_port);
    assert_eq!(
        str_at(annotations, "/prometheus.io~1port"),
        container_port.to_string()
    );
    let pod_labels = at(daemonset(), "/spec/template/metadata/labels");
    for (key, value) in at(service, "/spec/selector").as_object().unwrap() {
        assert_eq!(
            pod_labels.get(key),
            Some(value),
            "the Service selects the agents"
        );
    }
    assert!(
        at(daemonset(), "/spec/template/metadata")
            .get("annotations")
            .and_then(|a| a.get("prometheus.io/scrape"))
            .is_none(),
        "scrape annotations on the Service only: on the pods too, a kubernetes-pods job \
         would scrape every agent twice"
    );
}
