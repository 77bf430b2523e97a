"""Tests of charts/meshprobe with Helm's own SDK (helm-python-sdk: lint, render, schema) and the
Kubernetes API schemas (kubernetes-validate). Run by `cargo xtask chart` in its venv:

    python -m unittest discover -s charts/meshprobe/tests -v
"""

from __future__ import annotations

import json
import re
import unittest
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

CHART = Path(__file__).resolve().parent.parent
REPO = CHART.parent.parent
RELEASE, NAMESPACE = "mp", "monitoring"
FULLNAME = "mp-meshprobe"

# What tests/tests/agent_caps.rs proves the agent needs (kernel timestamps on port 862); that
# test reads the list from values.yaml, so the two cannot drift apart.
PROVEN_CAPS = ["BPF", "NET_ADMIN", "PERFMON", "NET_BIND_SERVICE"]

# The agent's seccomp profile (tests/tests/agent_seccomp.rs runs the agent under it) and where
# seccomp.install puts it.
SECCOMP_FILE = CHART / "files/seccomp/meshprobe-agent.json"
SECCOMP_LOCALHOST = "meshprobe/meshprobe-agent.json"
SECCOMP_INSTALL = {"seccomp": {"install": True}}

# Kubernetes versions to validate against: a current one and the newest kubernetes-validate has.
KUBE_VERSIONS = ["1.33", kubernetes_validate.utils.latest_version()]

# Kinds with no schema in kubernetes-validate (Prometheus Operator CRDs): checked by hand.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

# Settings of `meshprobe agent` the chart does not map to a value on purpose.
NOT_A_VALUE = {
    # The chart writes the file itself (zone from the node label, agent.configToml).
    "MESHPROBE_CONFIG",
    # Deprecated alias of MESHPROBE_METRICS_WORST_PEERS, kept for manifests written before it.
    "MESHPROBE_METRICS_PEER_LIMIT",
}

# Every value changed from its default (the override render).
OVERRIDES: dict[str, Any] = {
    "image": {"repository": "registry.example/meshprobe", "tag": "9.9.9", "pullPolicy": "Always"},
    "zookeeper": {
        "servers": "zk-a.infra:2181,zk-b.infra:2181",
        "rootPath": "mesh",
        "heartBeatNodePath": "members",
        "auth": {"username": "meshprobe", "passwordSecret": "zk-agents", "passwordKey": "pw", "worldRead": True},
    },
    "kafka": {
        "bootstrapServers": "kafka-0.kafka:9092,kafka-1.kafka:9092",
        "topic": "latency",
        "producerGroup": "mp-producer",
        "probes": True,
        "bufferMessages": 5000,
        "compression": "lz4",
        "security": {
            "protocol": "sasl_ssl",
            "caSecret": "kafka-ca",
            "caKey": "bundle.pem",
            "clientCertSecret": "kafka-client-tls",
            "saslMechanism": "SCRAM-SHA-512",
            "saslUsername": "agent",
            "saslPasswordSecret": "kafka-agent",
            "saslPasswordKey": "pw",
        },
        "properties": {"socket.keepalive.enable": "true"},
        "propertiesSecret": "kafka-extra",
    },
    "agent": {
        "nodeId": "fixed-node",
        "rack": "r12",
        "connTimeout": 7,
        "register": {"publicDns": "10.9.8.7", "publicPort": 1862, "listenerDns": "0.0.0.0", "listenerPort": 8862},
        "peers": ["a=198.18.0.2", "198.18.0.3:900"],
        "peersFile": ["# static", "c=198.18.0.4"],
        "interval": "500ms",
        "jitter": 20,
        "timeout": "800ms",
        "sizes": [68, 512, 1400],
        "window": "5s",
        "peerGrace": "3s",
        "peerNetworks": "10.0.0.0/8,fd00::/8",
        "peerPorts": "862,20000-20100",
        "maxMembers": 15000,
        "pinglist": {"fullMeshMax": 64, "rackPeers": 16, "zonePeers": 3, "minProbers": 4, "maxPeers": 100},
        "output": "json",
        "adminAddress": "0.0.0.0",
        "adminPort": 19862,
        "metricsWorstPeers": 3,
        "reflectAllow": "198.18.0.0/15,fd00::/8",
        "reflectBudgetPerSource": "500/s",
        "reflectBudgetTotal": "off",
        "reflectAllowEphemeralPort": True,
        "stampAuth": {"sender": "optional", "reflector": "required", "keySecret": "stamp-keys", "keyKey": "k1", "nextKeyKey": "k2"},
        "shutdownGrace": "4s",
        "interfaces": ["eth0", "eth1"],
        "noEbpf": True,
        "attach": "clsact",
        "ebpfLogLevel": 2,
        "kernelClock": "monotonic",
        "handoff": "off",
        "clockSynchronized": True,
        "hwRxStamps": True,
        "hwTxStamps": True,
        "swRxStamps": False,
        "logLevel": "debug",
        "configToml": 'MESHPROBE_KAFKA_BUFFER_MESSAGES = 4000\n',
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
    },
    "zone": {"source": "value", "value": "eu-west-1a"},
    "securityContext": {"capabilities": {"add": ["BPF", "NET_ADMIN", "PERFMON"]}},
    "priorityClassName": "system-node-critical",
    "updateStrategy": {"maxUnavailable": "20%"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}],
    "zookeeper_enabled": None,  # placeholder removed below (keeps the dict readable)
}
del OVERRIDES["zookeeper_enabled"]
OVERRIDES["zookeeper"]["enabled"] = True
OVERRIDES["metrics"] = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "peerLossThreshold": 0.05},
}
OVERRIDES["grafana"] = {"dashboard": {"enabled": True, "folder": "Network"}}
OVERRIDES["networkPolicy"] = {
    "enabled": True,
    "reflectorFrom": ["10.0.0.0/16", "fd00::/8"],
    "adminFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
}

# The environment the override render must produce: (name, value).
OVERRIDE_ENV = {
    "MESHPROBE_NODE_ID": "fixed-node",
    "MESHPROBE_ZONE": "eu-west-1a",
    "MESHPROBE_RACK": "r12",
    "SERVERS_ZK": f"{FULLNAME}-zookeeper.{NAMESPACE}.svc:2181",  # zookeeper.enabled wins
    "ROOT_PATH_ZK": "mesh",
    "HEART_BEAT_NODE_PATH": "members",
    "ZK_SASL_USERNAME": "meshprobe",
    "ZK_SASL_PASSWORD_FILE": "/etc/meshprobe/secrets/zookeeper/password",
    "ZK_WORLD_READ": "true",
    "CONN_TIMEOUT": "7",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka-0.kafka:9092,kafka-1.kafka:9092",
    "KAFKA_TOPIC": "latency",
    "KAFKA_PRODUCER_GROUP": "mp-producer",
    "MESHPROBE_KAFKA_PROBES": "true",
    "MESHPROBE_KAFKA_BUFFER_MESSAGES": "5000",
    "MESHPROBE_KAFKA_COMPRESSION": "lz4",
    "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
    "KAFKA_SSL_CA_FILE": "/etc/meshprobe/secrets/kafka-ca/ca.crt",
    "KAFKA_SSL_CERT_FILE": "/etc/meshprobe/secrets/kafka-client/tls.crt",
    "KAFKA_SSL_KEY_FILE": "/etc/meshprobe/secrets/kafka-client/tls.key",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "agent",
    "KAFKA_SASL_PASSWORD_FILE": "/etc/meshprobe/secrets/kafka-sasl/password",
    "KAFKA_PROPERTIES_FILE": "/etc/meshprobe/secrets/kafka-properties/kafka.properties",
    "KAFKA_PROPERTY_SOCKET_KEEPALIVE_ENABLE": "true",
    "REGISTER_PUBLIC_DNS": "10.9.8.7",
    "REGISTER_PUBLIC_PORT": "1862",
    "REGISTER_LISTENER_DNS": "0.0.0.0",
    "REGISTER_LISTENER_PORT": "8862",
    "MESHPROBE_PEERS": "a=198.18.0.2,198.18.0.3:900",
    "MESHPROBE_PEERS_FILE": "/etc/meshprobe/chart/peers.txt",
    "MESHPROBE_INTERVAL": "500ms",
    "MESHPROBE_JITTER": "20",
    "MESHPROBE_TIMEOUT": "800ms",
    "MESHPROBE_SIZES": "68,512,1400",
    "MESHPROBE_WINDOW": "5s",
    "MESHPROBE_PEER_GRACE": "3s",
    "MESHPROBE_PEER_NETWORKS": "10.0.0.0/8,fd00::/8",
    "MESHPROBE_PEER_PORTS": "862,20000-20100",
    "MESHPROBE_MAX_MEMBERS": "15000",
    "MESHPROBE_PINGLIST_FULL_MESH_MAX": "64",
    "MESHPROBE_PINGLIST_RACK_PEERS": "16",
    "MESHPROBE_PINGLIST_ZONE_PEERS": "3",
    "MESHPROBE_PINGLIST_MIN_PROBERS": "4",
    "MESHPROBE_PINGLIST_MAX_PEERS": "100",
    "MESHPROBE_OUTPUT": "json",
    "MESHPROBE_ADMIN_LISTEN": "0.0.0.0:19862",
    "MESHPROBE_REFLECT_ALLOW": "198.18.0.0/15,fd00::/8",
    "MESHPROBE_REFLECT_BUDGET_PER_SOURCE": "500/s",
    "MESHPROBE_REFLECT_BUDGET_TOTAL": "off",
    "MESHPROBE_REFLECT_ALLOW_EPHEMERAL_PORT": "true",
    "MESHPROBE_STAMP_AUTH_SENDER": "optional",
    "MESHPROBE_STAMP_AUTH_REFLECTOR": "required",
    "MESHPROBE_STAMP_KEY_FILE": "/etc/meshprobe/secrets/stamp/key",
    "MESHPROBE_STAMP_NEXT_KEY_FILE": "/etc/meshprobe/secrets/stamp/next-key",
    "MESHPROBE_METRICS_WORST_PEERS": "3",
    "MESHPROBE_SHUTDOWN_GRACE": "4s",
    "MESHPROBE_INTERFACES": "eth0,eth1",
    "MESHPROBE_NO_EBPF": "true",
    "MESHPROBE_ATTACH": "clsact",
    "MESHPROBE_EBPF_LOG_LEVEL": "2",
    "MESHPROBE_KERNEL_CLOCK": "monotonic",
    "MESHPROBE_HANDOFF": "off",
    "MESHPROBE_CLOCK_SYNCHRONIZED": "true",
    "MESHPROBE_HW_RX_STAMPS": "true",
    "MESHPROBE_HW_TX_STAMPS": "true",
    "MESHPROBE_NO_SW_RX_STAMPS": "true",
    "MESHPROBE_CONFIG": "/etc/meshprobe/chart/config.toml",
    "MESHPROBE_LOG": "debug",
    "RUST_BACKTRACE": "1",
}

# Values the schema must reject, with (a part of) Helm's message.
BAD_VALUES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unknown top-level key", {"agnet": {}}, ["additional properties 'agnet' not allowed"]),
    ("misspelt agent setting", {"agent": {"intervall": "1s"}}, ["/agent", "additional properties 'intervall' not allowed"]),
    ("duration without unit", {"agent": {"interval": "fast"}}, ["/agent/interval", "does not match pattern"]),
    ("jitter over 50 %", {"agent": {"jitter": 90}}, ["/agent/jitter", "maximum: got 90, want 50"]),
    ("probe size between 44 and 48", {"agent": {"sizes": [45]}}, ["/agent/sizes/0", "minimum: got 45, want 48"]),
    ("no probe size", {"agent": {"sizes": []}}, ["/agent/sizes", "minItems"]),
    ("listener port 0", {"agent": {"register": {"listenerPort": 0}}}, ["/agent/register/listenerPort", "minimum: got 0, want 1"]),
    ("CONN_TIMEOUT as text", {"agent": {"connTimeout": "10s"}}, ["/agent/connTimeout", "got string, want integer"]),
    ("node id with a slash", {"agent": {"nodeId": "a/b"}}, ["/agent/nodeId"]),
    ("unknown compression", {"kafka": {"compression": "brotli"}}, ["/kafka/compression", "value must be one of 'none', 'gzip', 'snappy', 'lz4', 'zstd'"]),
    ("bootstrap server without port", {"kafka": {"bootstrapServers": "kafka"}}, ["/kafka/bootstrapServers", "does not match pattern"]),
    ("ZooKeeper server without port", {"zookeeper": {"servers": "zk1,zk2:2181"}}, ["/zookeeper/servers", "does not match pattern"]),
    ("unknown zone source", {"zone": {"source": "guess"}}, ["/zone/source", "value must be one of 'nodeLabel', 'podLabel', 'value'"]),
    ("capability with CAP_ prefix", {"securityContext": {"capabilities": {"add": ["CAP_BPF"]}}}, ["/securityContext/capabilities/add/0", "value must be one of"]),
    ("privileged as text", {"securityContext": {"privileged": "yes"}}, ["/securityContext/privileged", "got string, want boolean"]),
    ("Localhost seccomp without a profile", {"securityContext": {"seccompProfile": {"type": "Localhost"}}}, ["/securityContext/seccompProfile", "missing property 'localhostProfile'"]),
    ("maxUnavailable neither number nor percentage", {"updateStrategy": {"maxUnavailable": "abc"}}, ["/updateStrategy/maxUnavailable", "'oneOf' failed"]),
    ("maxUnavailable 0", {"updateStrategy": {"maxUnavailable": 0}}, ["/updateStrategy/maxUnavailable", "minimum: got 0, want 1"]),
    ("peer network not a CIDR", {"agent": {"peerNetworks": "10.0.0.0/8,cluster"}}, ["/agent/peerNetworks", "does not match pattern"]),
    ("member cap 0", {"agent": {"maxMembers": 0}}, ["/agent/maxMembers", "minimum: got 0, want 1"]),
    ("ZooKeeper user without a Secret", {"zookeeper": {"auth": {"username": "meshprobe"}}}, ["/zookeeper/auth/passwordSecret"]),
    ("STAMP authentication without a key Secret", {"agent": {"stampAuth": {"reflector": "required"}}}, ["/agent/stampAuth", "keySecret"]),
    ("unknown STAMP authentication mode", {"agent": {"stampAuth": {"sender": "on"}}}, ["/agent/stampAuth/sender", "value must be one of"]),
    ("ZooKeeper user with a colon", {"zookeeper": {"auth": {"username": "a:b", "passwordSecret": "s"}}}, ["/zookeeper/auth/username", "does not match pattern"]),
    ("NetworkPolicy without reflector sources", {"networkPolicy": {"enabled": True}}, ["/networkPolicy/reflectorFrom", "minItems"]),
    ("reflector source not a CIDR", {"networkPolicy": {"reflectorFrom": ["nodes"]}}, ["/networkPolicy/reflectorFrom/0", "does not match pattern"]),
    ("Kafka SASL without a password Secret", {"kafka": {"security": {"saslMechanism": "PLAIN", "saslUsername": "a"}}}, ["/kafka/security/saslPasswordSecret"]),
    ("unknown Kafka protocol", {"kafka": {"security": {"protocol": "tls"}}}, ["/kafka/security/protocol", "value must be one of"]),
    ("Kafka property with upper case", {"kafka": {"properties": {"Socket.Timeout": "1"}}}, ["invalid propertyName 'Socket.Timeout'"]),
    ("worst peers above 1000", {"agent": {"metricsWorstPeers": 5000}}, ["/agent/metricsWorstPeers", "maximum"]),
    ("the removed metricsPeerLimit", {"agent": {"metricsPeerLimit": 256}}, ["/agent", "additional properties 'metricsPeerLimit' not allowed"]),
    ("loss threshold above 1", {"metrics": {"prometheusRule": {"peerLossThreshold": 2}}}, ["/metrics/prometheusRule/peerLossThreshold", "maximum: got 2, want 1"]),
    ("non-root uid 0", {"securityContext": {"runAsUser": 0}}, ["/securityContext/runAsUser", "minimum: got 0, want 1"]),
    ("seccomp install as text", {"seccomp": {"install": "yes"}}, ["/seccomp/install", "got string, want boolean"]),
    ("relative kubelet seccomp root", {"seccomp": {"kubeletSeccompRoot": "var/lib/kubelet/seccomp"}}, ["/seccomp/kubeletSeccompRoot", "does not match pattern"]),
]


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE)


def objects(manifests: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__source"] = path
                out.append(doc)
    return out


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def agent_container(ds: dict[str, Any]) -> dict[str, Any]:
    (c,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"]
    return c


def env_map(container: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in container["env"]:
        assert e["name"] not in out, f"env {e['name']} given twice"
        out[e["name"]] = e.get("value", e.get("valueFrom"))
    return out


def agent_settings() -> set[str]:
    """Environment names of every `meshprobe agent` setting (clap `env = "..."`)."""
    names: set[str] = set()
    for rs in ("probe-user/src/agent/config/args.rs", "probe-user/src/kafka_security.rs"):
        names.update(re.findall(r'env = "([A-Z0-9_]+)"', (REPO / rs).read_text()))
    assert "SERVERS_ZK" in names and "MESHPROBE_INTERVAL" in names, names
    return names


def registered_metrics() -> set[str]:
    """Metric names the agent registers (prometheus-client adds _total to counters)."""
    names: set[str] = set()
    for rs in (REPO / "probe-user/src").rglob("*.rs"):
        names.update(re.findall(r'"(meshprobe_[a-z0-9_]+)"', rs.read_text()))
    return names


def metric_known(token: str, known: set[str]) -> bool:
    if token in known:
        return True
    for suffix in ("_total", "_bucket", "_sum", "_count"):
        if token.endswith(suffix) and token[: -len(suffix)] in known:
            return True
    return False


class Lint(unittest.TestCase):
    def check(self, values: dict[str, Any] | None) -> None:
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
        self.assertEqual(report["errors"], [], report)
        serious = [m for m in report["messages"] if m["severity"] >= 2]
        self.assertEqual(serious, [], report)

    def test_lint_defaults(self) -> None:
        self.check(None)

    def test_lint_overrides(self) -> None:
        self.check(OVERRIDES)

    def test_chart_version_follows_the_workspace(self) -> None:
        cargo = (REPO / "Cargo.toml").read_text()
        version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
        with helm.Chart.load(CHART) as chart:
            self.assertEqual(chart.metadata["appVersion"], version)


class Image(unittest.TestCase):
    def test_dockerfile_file_capabilities_match_the_chart(self) -> None:
        docker = (CHART.parent / "Dockerfile").read_text()
        m = re.search(r"setcap ([a-z_,]+)\+ep (\S+)", docker)
        self.assertIsNotNone(m, "no setcap line in charts/Dockerfile")
        caps = [c.removeprefix("cap_").upper() for c in m.group(1).split(",")]
        self.assertEqual(caps, PROVEN_CAPS)
        with helm.Chart.load(CHART) as chart:
            self.assertEqual(m.group(2), chart.values["securityContext"]["fileCapabilitiesBinary"])
        self.assertIn('ENTRYPOINT ["/usr/local/bin/meshprobe"]', docker)
        ignore = (CHART.parent / "Dockerfile.dockerignore").read_text().split()
        self.assertIn("target", ignore)


class Schema(unittest.TestCase):
    def test_defaults_and_overrides_pass(self) -> None:
        with helm.Chart.load(CHART) as chart:
            chart.validate_schema({})
            chart.validate_schema(OVERRIDES)

    def test_bad_values_are_rejected_with_a_message(self) -> None:
        with helm.Chart.load(CHART) as chart:
            for label, values, wanted in BAD_VALUES:
                with self.subTest(label):
                    with self.assertRaises(helm.HelmValuesError) as cm:
                        chart.validate_schema(values)
                    for w in wanted:
                        self.assertIn(w, str(cm.exception), f"{label}: {values}")
                    # An install (render) stops on the same message.
                    with self.assertRaises(helm.HelmValuesError) as cm2:
                        chart.render(values, name=RELEASE, namespace=NAMESPACE)
                    self.assertIn("values don't meet the specifications of the schema", str(cm2.exception))
                    self.assertIn(wanted[0], str(cm2.exception))

    def test_template_refuses_a_zone_in_config_toml_with_node_labels(self) -> None:
        with self.assertRaises(helm.HelmRenderError) as cm:
            render({"agent": {"configToml": 'MESHPROBE_ZONE = "x"\n'}})
        self.assertIn("agent.configToml sets MESHPROBE_ZONE while zone.source is nodeLabel", str(cm.exception))


class KubernetesSchemas(unittest.TestCase):
    def validate_all(self, values: dict[str, Any] | None) -> list[str]:
        seen = []
        for o in objects(render(values)):
            kind = (o["apiVersion"], o["kind"])
            src = o.pop("__source")
            seen.append(o["kind"])
            if kind in CRD_KINDS:
                with self.assertRaises(kubernetes_validate.SchemaNotFoundError):
                    kubernetes_validate.validate(o, KUBE_VERSIONS[-1], strict=True)
                self.assertIn("spec", o)
                continue
            for v in KUBE_VERSIONS:
                with self.subTest(src=src, kind=o["kind"], version=v):
                    try:
                        kubernetes_validate.validate(o, v, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        self.fail(f"{src}: {o['kind']} invalid for Kubernetes {v}: {e.message} at {list(e.path)}")
        return seen

    def test_defaults_validate(self) -> None:
        kinds = self.validate_all(None)
        self.assertEqual(sorted(kinds), ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount"])

    def test_overrides_validate(self) -> None:
        kinds = self.validate_all(OVERRIDES)
        for k in ["DaemonSet", "ConfigMap", "StatefulSet", "Service", "ServiceMonitor", "PrometheusRule"]:
            self.assertIn(k, kinds)

    def test_other_modes_validate(self) -> None:
        for values in (
            {"securityContext": {"privileged": True}},
            {"securityContext": {"runAsNonRoot": True}, "stateDir": {"enabled": False}, "zone": {"source": "podLabel"}},
            {"zookeeper": {"enabled": True, "persistence": {"enabled": True, "storageClassName": "fast"}}, "kafka": {"bootstrapServers": ""}},
            {"metrics": {"service": {"enabled": True}}, "zone": {"source": "value"}, "serviceAccount": {"create": False}},
            SECCOMP_INSTALL,
            {**SECCOMP_INSTALL, "zone": {"source": "value"}, "stateDir": {"enabled": False}},
        ):
            with self.subTest(values=values):
                self.validate_all(values)


class DaemonSetDefaults(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.manifests = render()
        cls.objs = objects(cls.manifests)
        cls.ds = one(cls.objs, "DaemonSet")
        cls.pod = cls.ds["spec"]["template"]["spec"]
        cls.agent = agent_container(cls.ds)
        cls.env = env_map(cls.agent)

    def test_one_agent_per_linux_node_on_the_host_network(self) -> None:
        self.assertIs(self.pod["hostNetwork"], True)
        self.assertEqual(self.pod["dnsPolicy"], "ClusterFirstWithHostNet")
        self.assertEqual(self.pod["nodeSelector"], {"kubernetes.io/os": "linux"})
        self.assertEqual(self.pod["tolerations"], [{"operator": "Exists"}])
        self.assertNotIn("priorityClassName", self.pod)
        self.assertEqual(
            self.ds["spec"]["updateStrategy"],
            {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
        )

    def test_capabilities_exactly_the_proven_set_and_nothing_privileged(self) -> None:
        sc = self.agent["securityContext"]
        self.assertEqual(sc["capabilities"], {"add": PROVEN_CAPS, "drop": ["ALL"]})
        self.assertIs(sc["privileged"], False)
        self.assertIs(sc["allowPrivilegeEscalation"], False)
        self.assertIs(sc["readOnlyRootFilesystem"], True)
        self.assertEqual(sc["runAsUser"], 0)
        with helm.Chart.load(CHART) as chart:
            self.assertEqual(chart.values["securityContext"]["capabilities"]["add"], PROVEN_CAPS)
        for c in self.pod.get("initContainers", []) + self.pod["containers"]:
            csc = c.get("securityContext", {})
            self.assertFalse(csc.get("privileged", False), c["name"])
            if c["name"] != "agent":
                self.assertEqual(csc["capabilities"], {"drop": ["ALL"]}, c["name"])
                self.assertIs(csc["runAsNonRoot"], True)
        self.assertNotIn("hostPID", self.pod)
        self.assertNotIn("hostIPC", self.pod)

    def test_host_paths_only_the_state_dir_and_no_bpffs(self) -> None:
        host = [v for v in self.pod["volumes"] if "hostPath" in v]
        self.assertEqual(host, [{"name": "state", "hostPath": {"path": "/run/meshprobe", "type": "DirectoryOrCreate"}}])
        mounts = {m["mountPath"] for m in self.agent["volumeMounts"]}
        self.assertNotIn("/sys/fs/bpf", mounts)

    def test_service_account_token_only_in_the_zone_init_container(self) -> None:
        self.assertIs(self.pod["automountServiceAccountToken"], False)
        (init,) = self.pod["initContainers"]
        self.assertIn("/var/run/secrets/meshprobe-node-reader", {m["mountPath"] for m in init["volumeMounts"]})
        self.assertNotIn("/var/run/secrets/meshprobe-node-reader", {m["mountPath"] for m in self.agent["volumeMounts"]})
        self.assertIn("topology\\.kubernetes\\.io/zone", init["args"][0])
        role = one(self.objs, "ClusterRole")
        self.assertEqual(role["rules"], [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}])

    def test_env_names_and_values(self) -> None:
        e = self.env
        self.assertEqual(e["MESHPROBE_NODE_ID"], {"fieldRef": {"fieldPath": "spec.nodeName"}})
        self.assertEqual(e["REGISTER_PUBLIC_DNS"], {"fieldRef": {"fieldPath": "status.hostIP"}})
        self.assertNotIn("MESHPROBE_ZONE", e, "the zone comes in the config file (nodeLabel)")
        self.assertEqual(e["MESHPROBE_CONFIG"], "/etc/meshprobe/agent/agent.toml")
        expected = {
            "SERVERS_ZK": "zookeeper:2181",
            "ROOT_PATH_ZK": "meshprobe",
            "HEART_BEAT_NODE_PATH": "heartbeat",
            "CONN_TIMEOUT": "10",
            "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
            "KAFKA_TOPIC": "distributedTrace",
            "KAFKA_PRODUCER_GROUP": "meshprobe",
            "REGISTER_LISTENER_DNS": "::",
            "REGISTER_LISTENER_PORT": "862",
            "MESHPROBE_INTERVAL": "1s",
            "MESHPROBE_WINDOW": "10s",
            "MESHPROBE_ADMIN_LISTEN": "$(MESHPROBE_NODE_IP):9862",
        }
        for k, v in expected.items():
            self.assertEqual(e.get(k), v, k)
        for name in ("REGISTER_PUBLIC_PORT", "MESHPROBE_PEERS", "MESHPROBE_NO_EBPF", "MESHPROBE_OUTPUT"):
            self.assertNotIn(name, e, "left to the agent's default")
        # The admin listener binds the node's IP only: kubelet expands $(MESHPROBE_NODE_IP),
        # which must therefore come first.
        self.assertEqual(e["MESHPROBE_NODE_IP"], {"fieldRef": {"fieldPath": "status.hostIP"}})
        names = [v["name"] for v in self.agent["env"]]
        self.assertLess(names.index("MESHPROBE_NODE_IP"), names.index("MESHPROBE_ADMIN_LISTEN"))
        known = agent_settings() | {"MESHPROBE_LOG", "MESHPROBE_NODE_IP"}
        self.assertLessEqual(set(e), known, "every variable is an agent setting")

    def test_probes_on_the_admin_port(self) -> None:
        ports = {p["name"]: p for p in self.agent["ports"]}
        self.assertEqual(ports["admin"], {"name": "admin", "containerPort": 9862, "protocol": "TCP"})
        self.assertEqual(ports["stamp"], {"name": "stamp", "containerPort": 862, "protocol": "UDP"})
        self.assertEqual(self.agent["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "admin"})
        self.assertEqual(self.agent["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "admin"})
        self.assertIn("memory", self.agent["resources"]["limits"])
        self.assertIn("cpu", self.agent["resources"]["requests"])

    def test_optional_parts_are_off(self) -> None:
        kinds = {o["kind"] for o in self.objs}
        for k in ("StatefulSet", "ServiceMonitor", "PrometheusRule", "ConfigMap", "Service", "NetworkPolicy"):
            self.assertNotIn(k, kinds)

    def test_notes_say_how_to_read_the_topic(self) -> None:
        notes = self.manifests["meshprobe/templates/NOTES.txt"]
        self.assertIn("meshprobe consume", notes.replace("meshprobe-consume", ""))
        self.assertIn("consume --kafka-bootstrap-servers kafka:9092 --kafka-topic distributedTrace", notes)


class Overrides(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.objs = objects(render(OVERRIDES))
        cls.ds = one(cls.objs, "DaemonSet")
        cls.pod = cls.ds["spec"]["template"]["spec"]
        cls.agent = agent_container(cls.ds)

    def test_every_setting_arrives_under_its_environment_name(self) -> None:
        env = env_map(self.agent)
        self.assertEqual(env, OVERRIDE_ENV)
        missing = agent_settings() - NOT_A_VALUE - set(env)
        self.assertEqual(missing, set(), "agent settings without a chart value")

    def test_credentials_come_from_secrets_mounted_read_only(self) -> None:
        mounts = {m["name"]: m for m in self.agent["volumeMounts"]}
        self.assertEqual(mounts["secret-zookeeper"], {"name": "secret-zookeeper", "mountPath": "/etc/meshprobe/secrets/zookeeper", "readOnly": True})
        vols = {v["name"]: v for v in self.pod["volumes"]}
        self.assertEqual(
            vols["secret-zookeeper"]["secret"],
            {"secretName": "zk-agents", "defaultMode": 0o400, "items": [{"key": "pw", "path": "password"}]},
        )
        # STAMP keys: current and next from one Secret, mounted whole (not subPath) so that a
        # rotated Secret reaches the running agent.
        self.assertEqual(mounts["secret-stamp"], {"name": "secret-stamp", "mountPath": "/etc/meshprobe/secrets/stamp", "readOnly": True})
        self.assertEqual(
            vols["secret-stamp"]["secret"],
            {"secretName": "stamp-keys", "defaultMode": 0o400, "items": [{"key": "k1", "path": "key"}, {"key": "k2", "path": "next-key"}]},
        )
        for e in self.agent["env"]:
            self.assertNotIn("secretKeyRef", json.dumps(e), "no secret in the environment")
        # Kafka: one read-only directory per Secret, each file where its setting points.
        for name, secret, items in [
            ("kafka-ca", "kafka-ca", [{"key": "bundle.pem", "path": "ca.crt"}]),
            ("kafka-client", "kafka-client-tls", [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]),
            ("kafka-sasl", "kafka-agent", [{"key": "pw", "path": "password"}]),
            ("kafka-properties", "kafka-extra", [{"key": "kafka.properties", "path": "kafka.properties"}]),
        ]:
            self.assertEqual(mounts[f"secret-{name}"]["mountPath"], f"/etc/meshprobe/secrets/{name}")
            self.assertTrue(mounts[f"secret-{name}"]["readOnly"])
            self.assertEqual(vols[f"secret-{name}"]["secret"], {"secretName": secret, "defaultMode": 0o400, "items": items})
        # Non-root: the group reads it, and the pod's fsGroup is the agent's.
        nonroot = one(objects(render({**OVERRIDES, "securityContext": {"runAsNonRoot": True}})), "DaemonSet")
        pod = nonroot["spec"]["template"]["spec"]
        self.assertEqual(pod["securityContext"], {"fsGroup": 65532})
        self.assertEqual({v["name"]: v for v in pod["volumes"]}["secret-zookeeper"]["secret"]["defaultMode"], 0o440)

    def test_network_policy_admits_the_probers_and_the_scrapers_only(self) -> None:
        np = one(self.objs, "NetworkPolicy")
        self.assertEqual(np["spec"]["podSelector"]["matchLabels"], self.ds["spec"]["selector"]["matchLabels"])
        self.assertEqual(np["spec"]["policyTypes"], ["Ingress"])
        reflector, admin = np["spec"]["ingress"]
        self.assertEqual(reflector["ports"], [{"port": 8862, "protocol": "UDP"}])
        self.assertEqual(reflector["from"], [{"ipBlock": {"cidr": "10.0.0.0/16"}}, {"ipBlock": {"cidr": "fd00::/8"}}])
        self.assertEqual(admin["ports"], [{"port": 19862, "protocol": "TCP"}])
        self.assertEqual(admin["from"], OVERRIDES["networkPolicy"]["adminFrom"])
        # Without scrapers: the reflector rule alone (the admin port is closed to the network).
        only = one(objects(render({**OVERRIDES, "networkPolicy": {"enabled": True, "reflectorFrom": ["10.0.0.0/16"]}})), "NetworkPolicy")
        self.assertEqual(len(only["spec"]["ingress"]), 1)

    def test_pod_settings(self) -> None:
        self.assertEqual(self.agent["image"], "registry.example/meshprobe:9.9.9")
        self.assertEqual(self.pod["priorityClassName"], "system-node-critical")
        self.assertEqual(self.ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], "20%")
        self.assertEqual(self.pod["tolerations"][0]["key"], "dedicated")
        self.assertNotIn("initContainers", self.pod, "zone.source=value needs no API access")
        self.assertEqual(by_kind(self.objs, "ClusterRole"), [])
        ports = {p["name"]: p["containerPort"] for p in self.agent["ports"]}
        self.assertEqual(ports, {"stamp": 8862, "admin": 19862})
        self.assertEqual(self.agent["securityContext"]["capabilities"]["add"], ["BPF", "NET_ADMIN", "PERFMON"])
        (cm,) = [o for o in by_kind(self.objs, "ConfigMap") if o["metadata"]["name"] == f"{FULLNAME}-config"]
        self.assertEqual(cm["data"]["peers.txt"], "# static\nc=198.18.0.4\n")
        self.assertEqual(cm["data"]["config.toml"], "MESHPROBE_KAFKA_BUFFER_MESSAGES = 4000\n")
        self.assertIn("checksum/config", self.ds["spec"]["template"]["metadata"]["annotations"])

    def test_zookeeper_statefulset_when_enabled(self) -> None:
        sts = one(self.objs, "StatefulSet")
        self.assertEqual(sts["metadata"]["name"], f"{FULLNAME}-zookeeper")
        self.assertEqual(sts["spec"]["replicas"], 1)
        services = {s["metadata"]["name"] for s in by_kind(self.objs, "Service")}
        self.assertIn(f"{FULLNAME}-zookeeper", services)
        self.assertIn(f"{FULLNAME}-metrics", services)

    def test_service_monitor_rule_and_dashboard_when_enabled(self) -> None:
        sm = one(self.objs, "ServiceMonitor")
        self.assertEqual(sm["metadata"]["labels"]["release"], "kube-prometheus-stack")
        self.assertEqual(sm["spec"]["endpoints"][0]["port"], "admin")
        svc = [s for s in by_kind(self.objs, "Service") if s["metadata"]["name"] == f"{FULLNAME}-metrics"][0]
        self.assertEqual(svc["spec"]["ports"][0]["port"], 19862)

        rule = one(self.objs, "PrometheusRule")
        alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
        for a in ("MeshprobePeerLoss", "MeshprobeP99Jump", "MeshprobeAgentNotReady"):
            self.assertIn(a, alerts)
        self.assertIn("> 0.05", alerts["MeshprobePeerLoss"]["expr"])
        known = registered_metrics()
        exprs = " ".join(r["expr"] for r in alerts.values())
        tokens = set(re.findall(r"meshprobe_[a-z0-9_]+", exprs))
        self.assertTrue(tokens)
        for t in tokens:
            self.assertTrue(metric_known(t, known), f"alert uses {t}, which the agent does not export")

        (dash,) = [o for o in by_kind(self.objs, "ConfigMap") if o["metadata"]["name"] == f"{FULLNAME}-dashboard"]
        self.assertEqual(dash["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(dash["metadata"]["annotations"]["grafana_folder"], "Network")
        board = json.loads(dash["data"]["meshprobe.json"])
        types = {p["type"] for p in board["panels"]}
        self.assertTrue({"heatmap", "table", "timeseries", "stat"} <= types, types)
        text = json.dumps(board)
        for t in set(re.findall(r"meshprobe_[a-z0-9_]+", text)):
            self.assertTrue(metric_known(t, known), f"dashboard uses {t}, which the agent does not export")

    def test_privileged_only_when_asked(self) -> None:
        sc = agent_container(one(objects(render({"securityContext": {"privileged": True}})), "DaemonSet"))["securityContext"]
        self.assertIs(sc["privileged"], True)
        self.assertNotIn("capabilities", sc)

    def test_non_root_mode(self) -> None:
        sc = agent_container(one(objects(render({"securityContext": {"runAsNonRoot": True}})), "DaemonSet"))["securityContext"]
        self.assertIs(sc["runAsNonRoot"], True)
        self.assertEqual(sc["runAsUser"], 65532)
        self.assertIs(sc["allowPrivilegeEscalation"], True, "file capabilities need it")
        self.assertEqual(sc["capabilities"]["add"], PROVEN_CAPS)
        agent = agent_container(one(objects(render({"securityContext": {"runAsNonRoot": True}})), "DaemonSet"))
        self.assertEqual(agent["command"], ["/usr/local/bin/meshprobe-fcaps"])
        self.assertNotIn("command", self.agent, "as uid 0: the image's plain binary")
        with self.assertRaises(helm.HelmRenderError) as cm:
            render({"securityContext": {"runAsNonRoot": True, "capabilities": {"add": ["BPF", "NET_ADMIN", "PERFMON"]}}})
        self.assertIn("securityContext.runAsNonRoot needs NET_BIND_SERVICE in securityContext.capabilities.add", str(cm.exception))

    def test_zone_from_the_pod_label(self) -> None:
        ds = one(objects(render({"zone": {"source": "podLabel"}})), "DaemonSet")
        env = env_map(agent_container(ds))
        self.assertEqual(env["MESHPROBE_ZONE"], {"fieldRef": {"fieldPath": "metadata.labels['topology.kubernetes.io/zone']"}})
        self.assertNotIn("MESHPROBE_CONFIG", env)

    def test_without_kafka_or_zookeeper(self) -> None:
        env = env_map(agent_container(one(objects(render({"kafka": {"bootstrapServers": ""}, "zookeeper": {"servers": ""}})), "DaemonSet")))
        self.assertNotIn("KAFKA_BOOTSTRAP_SERVERS", env)
        self.assertNotIn("SERVERS_ZK", env)



class Seccomp(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.objs = objects(render(SECCOMP_INSTALL))
        cls.ds = one(cls.objs, "DaemonSet")
        cls.pod = cls.ds["spec"]["template"]["spec"]
        cls.agent = agent_container(cls.ds)
        (cls.init,) = [c for c in cls.pod["initContainers"] if c["name"] == "seccomp"]

    def test_profile_file_is_deny_by_default_and_sorted(self) -> None:
        p = json.loads(SECCOMP_FILE.read_text())
        self.assertEqual((p["defaultAction"], p["defaultErrnoRet"]), ("SCMP_ACT_ERRNO", 1))
        self.assertEqual(p["architectures"], ["SCMP_ARCH_X86_64"])
        (rule,) = p["syscalls"]
        self.assertEqual(set(rule), {"names", "action"})
        self.assertEqual(rule["action"], "SCMP_ACT_ALLOW")
        self.assertEqual(rule["names"], sorted(set(rule["names"])))
        self.assertIn("bpf", rule["names"])
        for never in ("ptrace", "mount", "setns", "unshare", "init_module", "kexec_load", "clone", "perf_event_open"):
            self.assertNotIn(never, rule["names"])

    def test_off_by_default(self) -> None:
        objs = objects(render())
        sc = agent_container(one(objs, "DaemonSet"))["securityContext"]
        self.assertEqual(sc["seccompProfile"], {"type": "Unconfined"})
        self.assertNotIn("seccomp", [c["name"] for c in one(objs, "DaemonSet")["spec"]["template"]["spec"].get("initContainers", [])])
        self.assertEqual([o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-seccomp")], [])

    def test_agent_runs_under_the_installed_profile(self) -> None:
        self.assertEqual(self.agent["securityContext"]["seccompProfile"], {"type": "Localhost", "localhostProfile": SECCOMP_LOCALHOST})
        self.assertNotIn("seccomp-host", [m["name"] for m in self.agent["volumeMounts"]])
        self.assertIn("checksum/seccomp", self.ds["spec"]["template"]["metadata"]["annotations"])

    def test_configmap_holds_the_file_verbatim(self) -> None:
        (cm,) = [o for o in by_kind(self.objs, "ConfigMap") if o["metadata"]["name"] == f"{FULLNAME}-seccomp"]
        self.assertEqual(cm["data"], {"meshprobe-agent.json": SECCOMP_FILE.read_text()})
        (vol,) = [v for v in self.pod["volumes"] if v["name"] == "seccomp-profile"]
        self.assertEqual(vol["configMap"], {"name": f"{FULLNAME}-seccomp", "defaultMode": 0o444})

    def test_init_container_writes_only_the_chart_directory_without_capabilities(self) -> None:
        host = {v["name"]: v["hostPath"] for v in self.pod["volumes"] if "hostPath" in v}
        self.assertEqual(
            host,
            {
                "state": {"path": "/run/meshprobe", "type": "DirectoryOrCreate"},
                "seccomp-host": {"path": "/var/lib/kubelet/seccomp/meshprobe", "type": "DirectoryOrCreate"},
            },
        )
        mounts = {m["name"]: m for m in self.init["volumeMounts"]}
        self.assertEqual(set(mounts), {"seccomp-profile", "seccomp-host"})
        self.assertIs(mounts["seccomp-profile"]["readOnly"], True)
        sc = self.init["securityContext"]
        self.assertEqual(sc["capabilities"], {"drop": ["ALL"]})
        self.assertIs(sc["allowPrivilegeEscalation"], False)
        self.assertIs(sc["readOnlyRootFilesystem"], True)
        self.assertEqual(sc["seccompProfile"], {"type": "RuntimeDefault"})
        self.assertEqual(self.init["image"], agent_container(self.ds)["image"], "no other image to trust")
        # Written next to the target, then renamed into place: where localhostProfile points.
        script = self.init["args"][0]
        self.assertIn("mv -f /host-seccomp/.meshprobe-agent.json.tmp /host-seccomp/meshprobe-agent.json", script)
        self.assertEqual(self.pod["initContainers"][0]["name"], "seccomp", "installed before anything else runs")

    def test_kubelet_root_and_zone_init_container_together(self) -> None:
        pod = one(objects(render({"seccomp": {"install": True, "kubeletSeccompRoot": "/data/kubelet/seccomp"}})), "DaemonSet")["spec"]["template"]["spec"]
        self.assertEqual([c["name"] for c in pod["initContainers"]], ["seccomp", "zone"])
        (v,) = [v for v in pod["volumes"] if v["name"] == "seccomp-host"]
        self.assertEqual(v["hostPath"]["path"], "/data/kubelet/seccomp/meshprobe")

    def test_refuses_install_without_no_new_privs(self) -> None:
        for sc in ({"runAsNonRoot": True}, {"privileged": True}):
            with self.subTest(sc=sc), self.assertRaises(helm.HelmRenderError) as cm:
                render({**SECCOMP_INSTALL, "securityContext": sc})
            self.assertIn("seccomp.install is for the default mode", str(cm.exception))

    def test_refuses_another_profile_with_install(self) -> None:
        with self.assertRaises(helm.HelmRenderError) as cm:
            render({**SECCOMP_INSTALL, "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}})
        self.assertIn("seccomp.install runs the agent under the chart's profile", str(cm.exception))


if __name__ == "__main__":
    unittest.main(verbosity=2)
