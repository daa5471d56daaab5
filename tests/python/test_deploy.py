"""deploy/: the container, compose and Kubernetes files are linted, validated and consistent with
the binary, without a container engine or a cluster (neither runs here).

- Container: hadolint on the Dockerfile; rootfs.sh assembles the run-time tree from the built
  binary, and that tree is checked (stripped binary, non-root user, default config valid, the
  HEALTHCHECK's probe answering against the binary serving that config).
- Compose: every mounted file exists, the gateways' merged config is valid, Prometheus scrapes
  each gateway.
- Kubernetes: yamllint; kubernetes-validate --strict on every built resource of the base and of
  the fleet, TLS and mutual-TLS overlays (built here by a small subset of kustomize: resources, namespace, labels,
  configMapGenerator, replicas, JSON 6902 patches); the security settings, probes and admin-port
  policy; the PrometheusRule equals the shipped rules.
"""

import copy
import os
import re
import subprocess
import tempfile
import unittest

import yaml

from harness import BIN, ROOT, start_gateway, stop

DEPLOY = os.path.join(ROOT, "deploy")


def run(*args, env=None, check=True):
    return subprocess.run(args, capture_output=True, text=True, env=env, check=check)


class Container(unittest.TestCase):
    def test_hadolint_passes(self):
        out = run("hadolint", os.path.join(DEPLOY, "container", "Dockerfile"), check=False)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_the_run_time_tree_is_stripped_non_root_and_serves_its_health_check(self):
        with open(os.path.join(DEPLOY, "container", "Dockerfile"), encoding="utf-8") as f:
            dockerfile = f.read()
        with tempfile.TemporaryDirectory() as out:
            run(os.path.join(DEPLOY, "container", "rootfs.sh"), out, BIN)
            binary = os.path.join(out, "usr", "local", "bin", "embedgate")
            self.assertTrue(os.access(binary, os.X_OK))
            sections = run("readelf", "-S", "-W", binary).stdout
            for debug in (".debug_info", ".debug_line", ".debug_str"):
                self.assertNotIn(debug, sections)
            self.assertNotIn(".symtab", sections)
            self.assertLess(os.path.getsize(binary), os.path.getsize(BIN))
            self.assertIn("embedgate", run(binary, "--version").stdout)

            with open(os.path.join(out, "etc", "passwd"), encoding="utf-8") as f:
                passwd = f.read()
            with open(os.path.join(out, "etc", "group"), encoding="utf-8") as f:
                group = f.read()
            user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
            self.assertIsNotNone(user, "the image runs as a numeric non-root user")
            self.assertNotEqual(user.group(1), "0")
            line = next(l for l in passwd.splitlines() if l.split(":")[2] == user.group(1))
            self.assertTrue(line.endswith(":/sbin/nologin"), line)
            self.assertIn(f"embedgate:x:{user.group(2)}:", group)

            config = os.path.join(out, "etc", "embedgate", "embedgate.toml")
            self.assertIn('"/etc/embedgate/embedgate.toml"', dockerfile, "CMD uses the shipped config")
            self.assertIn("ok:", run(binary, "check-config", "--config", config).stdout)

            # The HEALTHCHECK's command, against the binary serving the shipped config (ports
            # moved to ephemeral ones through the environment, as an operator can), with and
            # without HTTPS on the API: it probes the admin listener, plain HTTP either way.
            health = re.search(r'"probe", "(http://127\.0\.0\.1:9464/healthz)"', dockerfile)
            self.assertIsNotNone(health, "HEALTHCHECK probes the admin listener's /healthz")
            cert, key = os.path.join(out, "tls.crt"), os.path.join(out, "tls.key")
            run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-days", "2", "-subj", "/CN=localhost", "-keyout", key, "-out", cert)
            plain = dict(os.environ, EMBEDGATE_LISTEN="127.0.0.1:0", EMBEDGATE_ADMIN_LISTEN="127.0.0.1:0")
            https = dict(plain, EMBEDGATE_TLS__CERT_FILE=cert, EMBEDGATE_TLS__KEY_FILE=key)
            for env in (plain, https):
                proc, fields = start_gateway(config, env=env, binary=binary)
                try:
                    self.assertEqual(fields.get("https", False), env is https)
                    url = health.group(1).replace("127.0.0.1:9464", fields["admin"])
                    self.assertEqual(run(binary, "probe", url, check=False).returncode, 0)
                    bad = run(binary, "probe", url.replace("/healthz", "/nope"), check=False)
                    self.assertNotEqual(bad.returncode, 0)
                finally:
                    stop(proc)


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


class Compose(unittest.TestCase):
    def test_mounted_files_exist_the_config_is_valid_and_every_gateway_is_scraped(self):
        compose = load_all(os.path.join(DEPLOY, "compose.yaml"))[0]
        services = compose["services"]
        gateways = [n for n, s in services.items() if n.startswith("gateway-")]
        self.assertEqual(len(gateways), 3)
        self.assertTrue({"redis", "sim", "prometheus", "grafana"} <= set(services))
        for name, svc in services.items():
            for volume in svc.get("volumes", []):
                host = volume.split(":")[0]
                self.assertTrue(os.path.exists(os.path.join(DEPLOY, host)), f"{name}: {host}")
        gw = services["gateway-1"]
        configs = [os.path.join(DEPLOY, "container", "embedgate.toml"), os.path.join(DEPLOY, "compose", "embedgate.toml")]
        self.assertEqual(gw["command"][-1], "/etc/embedgate/compose.toml")
        env = dict(os.environ, **gw["environment"])
        out = run(BIN, "check-config", *sum((["--config", c] for c in configs), []), env=env)
        self.assertIn("cluster mode", out.stdout)
        prom = load_all(os.path.join(DEPLOY, "compose", "prometheus.yml"))[0]
        targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
        self.assertEqual(sorted(targets), sorted(f"{g}:9464" for g in gateways))


def kustomize(directory):
    """A subset of `kustomize build`: enough for deploy/k8s (see the module's docstring)."""
    with open(os.path.join(directory, "kustomization.yaml"), encoding="utf-8") as f:
        k = yaml.safe_load(f)
    docs = []
    for r in k.get("resources", []):
        path = os.path.join(directory, r)
        docs += kustomize(path) if os.path.isdir(path) else load_all(path)
    for gen in k.get("configMapGenerator", []):
        data = {}
        for f in gen["files"]:
            with open(os.path.join(directory, f), encoding="utf-8") as fh:
                data[os.path.basename(f)] = fh.read()
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    if "namespace" in k:
        for d in docs:
            if d["kind"] != "Namespace":
                d["metadata"]["namespace"] = k["namespace"]
    for label in k.get("labels", []):
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(label["pairs"])
            if label.get("includeSelectors"):
                spec = d.get("spec", {})
                for selector in (
                    spec.get("selector", {}).get("matchLabels") if d["kind"] in ("Deployment", "PodDisruptionBudget") else None,
                    spec.get("template", {}).get("metadata", {}).get("labels"),
                    spec.get("selector") if d["kind"] == "Service" else None,
                    spec.get("podSelector", {}).get("matchLabels") if d["kind"] == "NetworkPolicy" else None,
                ):
                    if selector is not None:
                        selector.update(label["pairs"])
    for rep in k.get("replicas", []):
        for d in docs:
            if d["kind"] == "Deployment" and d["metadata"]["name"] == rep["name"]:
                d["spec"]["replicas"] = rep["count"]
    for p in k.get("patches", []):
        target = p["target"]
        for d in docs:
            if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]:
                for op in yaml.safe_load(p["patch"]):
                    apply_op(d, op)
    return docs


def apply_op(doc, op):
    *parents, last = op["path"].strip("/").split("/")
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if op["op"] == "add" and isinstance(node, list):
        if last == "-":
            node.append(copy.deepcopy(op["value"]))
        else:
            node.insert(int(last), copy.deepcopy(op["value"]))
    elif op["op"] == "replace" and isinstance(node, list):
        assert int(last) < len(node), op["path"]
        node[int(last)] = copy.deepcopy(op["value"])
    elif op["op"] in ("add", "replace"):
        if op["op"] == "replace":
            assert last in node, op["path"]
        node[last] = copy.deepcopy(op["value"])
    else:
        raise AssertionError(f"unsupported patch op {op['op']}")


def pod_config(docs, tmp):
    """Writes the ConfigMap's settings and a tenant table in the Secret's shape into tmp: their
    paths, for `--config`."""
    settings = os.path.join(tmp, "embedgate.toml")
    tenants = os.path.join(tmp, "tenants.toml")
    with open(settings, "w") as f:
        f.write(find(docs, "ConfigMap")["data"]["embedgate.toml"])
    with open(tenants, "w") as f:
        f.write('[[tenants]]\nid = "acme"\napi_key_sha256 = ["' + "0" * 64 + '"]\n')
    return settings, tenants


def self_signed(tmp, name, subject="/CN=embedgate.embedgate.svc"):
    """A P-256 key and a self-signed certificate in tmp: name.key, name.crt."""
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "2", "-subj", subject,
        "-keyout", os.path.join(tmp, name + ".key"), "-out", os.path.join(tmp, name + ".crt"))


def find(docs, kind, name=None):
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


class Kubernetes(unittest.TestCase):
    def test_yamllint_is_clean(self):
        out = run("yamllint", "-s", "-c", os.path.join(ROOT, ".yamllint.yaml"), DEPLOY, check=False)
        self.assertEqual(out.returncode, 0, out.stdout)

    def validate(self, docs):
        crds = {"ServiceMonitor", "PrometheusRule", "Certificate"}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump_all([d for d in docs if d["kind"] not in crds], f)
        out = run("kubernetes-validate", "--strict", "--quiet", f.name, check=False)
        os.unlink(f.name)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertNotIn("ERROR", out.stdout)
        for d in docs:
            if d["kind"] in crds:
                group = "cert-manager.io/v1" if d["kind"] == "Certificate" else "monitoring.coreos.com/v1"
                self.assertEqual(d["apiVersion"], group)
                self.assertIn("spec", d)

    def test_the_base_is_valid_locked_down_and_probed(self):
        docs = kustomize(os.path.join(DEPLOY, "k8s", "base"))
        self.validate(docs)
        kinds = {d["kind"] for d in docs}
        self.assertTrue({"Deployment", "Service", "NetworkPolicy", "ConfigMap", "Secret", "PodDisruptionBudget",
                         "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "ServiceAccount"} <= kinds)
        pod = find(docs, "Deployment")["spec"]["template"]["spec"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        c = pod["containers"][0]
        self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
        self.assertFalse(c["securityContext"]["allowPrivilegeEscalation"])
        self.assertEqual(c["securityContext"]["capabilities"]["drop"], ["ALL"])
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
        # Serving goes on while the endpoint removal propagates; the sleep and the graceful
        # stop (up to 10 s for requests in flight) fit the grace period.
        sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        self.assertGreaterEqual(sleep, 5)
        self.assertLess(sleep + 10, pod["terminationGracePeriodSeconds"])
        self.assertIn("memory", c["resources"]["limits"])
        # The admin port is not in the portals' Service and only reachable from inside.
        api = find(docs, "Service", "embedgate")
        self.assertNotIn(9464, [p.get("targetPort") for p in api["spec"]["ports"]])
        self.assertNotIn("admin", [p.get("targetPort") for p in api["spec"]["ports"]])
        policy = find(docs, "NetworkPolicy")
        for rule in policy["spec"]["ingress"]:
            ports = [p["port"] for p in rule["ports"]]
            if 9464 in ports:
                self.assertIn("from", rule, "the admin port is restricted to some peers")
        # The rules are the shipped ones.
        shipped = load_all(os.path.join(DEPLOY, "prometheus", "alerts.yml"))[0]
        self.assertEqual(find(docs, "PrometheusRule")["spec"], shipped)
        # The ConfigMap's settings plus a tenant table in the Secret's shape are valid.
        with tempfile.TemporaryDirectory() as tmp:
            settings, tenants = pod_config(docs, tmp)
            args = c["args"]
            self.assertEqual(args[:1], ["serve"])
            self.assertIn("ok:", run(BIN, "check-config", "--config", settings, "--config", tenants).stdout)

    def test_the_fleet_overlay_runs_three_or_more_replicas_on_redis(self):
        docs = kustomize(os.path.join(DEPLOY, "k8s", "overlays", "fleet"))
        self.validate(docs)
        self.assertEqual(find(docs, "Deployment")["spec"]["replicas"], 3)
        self.assertEqual(find(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"], 3)
        env = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
        self.assertIn("EMBEDGATE_REDIS__URL", [e["name"] for e in env])
        self.assertIn("redis-url", find(docs, "Secret")["stringData"])

    def test_the_tls_overlay_serves_https_from_the_secret_cert_manager_renews(self):
        docs = kustomize(os.path.join(DEPLOY, "k8s", "overlays", "tls"))
        self.validate(docs)
        certificate = find(docs, "Certificate")
        self.assertEqual(certificate["metadata"]["namespace"], "embedgate")
        pod = find(docs, "Deployment")["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]}
        # The Secret cert-manager writes is mounted whole (no subPath: the kubelet updates it in
        # the running pod) where the settings read it.
        volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == certificate["spec"]["secretName"])
        mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
        self.assertNotIn("subPath", mount)
        self.assertEqual(env["EMBEDGATE_TLS__CERT_FILE"], mount["mountPath"] + "/tls.crt")
        self.assertEqual(env["EMBEDGATE_TLS__KEY_FILE"], mount["mountPath"] + "/tls.key")
        self.assertEqual(c["livenessProbe"]["httpGet"]["scheme"], "HTTPS")
        self.assertEqual(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS")
        api = find(docs, "Service", "embedgate")
        self.assertEqual(api["spec"]["ports"][0], {"name": "https", "port": 443, "targetPort": "http"})
        # The settings the pod runs with, the certificate's files where the variables say, pass
        # check-config; a key that is not the certificate's does not.
        with tempfile.TemporaryDirectory() as tmp:
            settings, tenants = pod_config(docs, tmp)
            for name in ("ours", "other"):
                self_signed(tmp, name)
            files = lambda **names: {f"EMBEDGATE_TLS__{k.upper()}": os.path.join(tmp, v) for k, v in names.items()}
            self.assert_check_config(settings, tenants, files(cert_file="ours.crt", key_file="ours.key"))
            self.assert_check_config(settings, tenants, files(cert_file="ours.crt", key_file="other.key"),
                                     refused="tls.key_file")

    def assert_check_config(self, settings, tenants, tls_env, refused=None):
        """`check-config` on the pod's settings with `tls_env` added: passes, or, given `refused`,
        fails naming it."""
        out = run(BIN, "check-config", "--config", settings, "--config", tenants,
                  env=dict(os.environ, **tls_env), check=False)
        if refused is None:
            self.assertIn("ok:", out.stdout, out.stderr)
        else:
            self.assertNotEqual(out.returncode, 0)
            self.assertIn(refused, out.stderr)

    def test_the_mtls_overlay_requires_client_certificates_and_probes_the_admin_port(self):
        docs = kustomize(os.path.join(DEPLOY, "k8s", "overlays", "mtls"))
        self.validate(docs)
        pod = find(docs, "Deployment")["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]}
        # The tls overlay's settings, and the authority's Secret mounted whole where the
        # setting reads it (no subPath: a renewed authority or list reaches the running pod).
        self.assertIn("EMBEDGATE_TLS__CERT_FILE", env)
        volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "embedgate-client-ca")
        mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
        self.assertNotIn("subPath", mount)
        self.assertEqual(env["EMBEDGATE_TLS__CLIENT_CA_FILE"], mount["mountPath"] + "/ca.crt")
        # The kubelet presents no client certificate: its probes go to the admin port, over HTTP.
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            self.assertEqual(c[probe]["httpGet"], {"path": path, "port": "admin"})
        self.assertIn("admin", ports)
        with tempfile.TemporaryDirectory() as tmp:
            settings, tenants = pod_config(docs, tmp)
            self_signed(tmp, "server")
            self_signed(tmp, "portals", "/CN=portal authority")
            files = lambda ca: {
                f"EMBEDGATE_TLS__{k}": os.path.join(tmp, v)
                for k, v in (("CERT_FILE", "server.crt"), ("KEY_FILE", "server.key"), ("CLIENT_CA_FILE", ca))
            }
            self.assert_check_config(settings, tenants, files("portals.crt"))
            self.assert_check_config(settings, tenants, files("portals.key"), refused="tls.client_ca_file")


if __name__ == "__main__":
    unittest.main(verbosity=2)
