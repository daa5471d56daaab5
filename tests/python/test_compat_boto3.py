"""Drop-in mode with boto3: a portal's unmodified boto3 code pointed at the gateway's
QuickSight-compatible listener.

Follows the operator's workflow end to end: `embedgate tenant-credentials` prints a tenant's
access key (the master key in EMBEDGATE_MASTER_KEY), the key id goes into the config, then
`embedgate serve` runs in front of `embedgate sim`, and boto3 talks only to the gateway.
Binary from $EMBEDGATE_BIN (default target/debug/embedgate).
"""

import json
import os
import subprocess
import tempfile
import unittest
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, SSLError

from harness import ACCOUNT, BIN, ROOT, get_json, metric, start_gateway, start_sim, stop, upstream_table, user_arn, wait_for

MASTER = "python-compat-test-master-key-0123456789"


# The kitchen sink's AllowedDomains: a tenant may name only domains its policy lists, so the
# requests that name them go to `sink-domains`, the others to `sink`.
SINK_DOMAINS = '["https://app.example.com", "https://*.example.org", "http://localhost:3000"]'


def sink_tenant(tenant, ids, domains):
    return f"""
[[tenants]]
id = "{tenant}"
api_key_sha256 = []
access_key_ids = {ids}
default_account = "{ACCOUNT}"
max_tracked_keys = 0

[tenants.policy]
dashboards = ["*"]
topics = ["*"]
themes = ["*"]
namespaces = ["default"]
identity_types = ["QUICKSIGHT", "ANONYMOUS"]
user_arns = ["arn:aws:quicksight:*:{ACCOUNT}:user/default/*"]
experiences = ["Dashboard", "DashboardVisual", "QuickSightConsole", "QSearchBar", "GenerativeQnA", "QuickChat"]
allowed_domains = {domains}

[tenants.policy.session_tags]
tenant = ["sink"]
region = ["*"]
"""


def config(sim_endpoint, acme_ids, slow_ids, sink_ids, fenced_ids):
    ids = lambda xs: "[" + ", ".join(f'"{x}"' for x in xs) + "]"
    return f"""
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
compat_listen = "127.0.0.1:0"
log_format = "json"
workers = 2
{upstream_table(sim_endpoint)}
[refill]
enabled = true

[[tenants]]
id = "acme"
api_key_sha256 = []
access_key_ids = {ids(acme_ids)}
default_account = "{ACCOUNT}"
warm = [
  {{ Operation = "GetDashboardEmbedUrl", Depth = 2, DashboardId = "sales-2024", IdentityType = "QUICKSIGHT", UserArn = "{user_arn('alice')}" }},
  {{ Operation = "GetDashboardEmbedUrl", Depth = 1, DashboardId = "sales-2024", IdentityType = "QUICKSIGHT", UserArn = "{user_arn('carol')}" }},
]

[tenants.policy]
dashboards = ["*"]
namespaces = ["default"]
user_arns = ["arn:aws:quicksight:*:{ACCOUNT}:user/default/*"]

[tenants.policy.session_tags]
tenant = ["acme"]

# Every member of every operation: a wide policy, and no demand tracking, so the refiller never
# calls QuickSight for these tenants while the test reads what QuickSight last received.
{sink_tenant("sink", ids(sink_ids), "[]")}
{sink_tenant("sink-domains", ids(fenced_ids), SINK_DOMAINS)}

[[tenants]]
id = "slow"
api_key_sha256 = []
access_key_ids = {ids(slow_ids)}
default_account = "{ACCOUNT}"
rate_per_sec = 2.0
burst = 1

[tenants.policy]
dashboards = ["*"]
namespaces = ["default"]
user_arns = ["arn:aws:quicksight:*:{ACCOUNT}:user/default/*"]
"""


class DropInWithBoto3(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.sim, cls.sim_endpoint = start_sim()
        env = dict(os.environ, EMBEDGATE_MASTER_KEY=MASTER)
        path = os.path.join(cls.tmp.name, "embedgate.toml")
        # The operator's workflow: a config without keys, then one new key per tenant (two for
        # acme: rotation), added to the config.
        with open(path, "w", encoding="utf-8") as f:
            f.write(config(
                cls.sim_endpoint,
                ["EGPLACEHOLDER0000001"],
                ["EGPLACEHOLDER0000002"],
                ["EGPLACEHOLDER0000003"],
                ["EGPLACEHOLDER0000004"],
            ))
        cls.creds = {}
        for tenant, n in (("acme", 2), ("slow", 1), ("sink", 1), ("sink-domains", 1)):
            for _ in range(n):
                out = subprocess.run(
                    [BIN, "tenant-credentials", "--config", path, tenant],
                    env=env, capture_output=True, text=True, check=True,
                ).stdout
                fields = dict(
                    line.split(":", 1) for line in out.splitlines() if line.startswith(("access key id", "secret access key"))
                )
                cls.creds.setdefault(tenant, []).append(
                    (fields["access key id"].strip(), fields["secret access key"].strip())
                )
        with open(path, "w", encoding="utf-8") as f:
            f.write(config(
                cls.sim_endpoint,
                [k for k, _ in cls.creds["acme"]],
                [k for k, _ in cls.creds["slow"]],
                [k for k, _ in cls.creds["sink"]],
                [k for k, _ in cls.creds["sink-domains"]],
            ))
        cls.gateway, fields = start_gateway(path, env)
        cls.endpoint = "http://" + fields["compat"]
        cls.admin = "http://" + fields["admin"]
        # Both warm keys stocked (alice 2 deep for boto3, carol 1 deep for the Node test) before
        # any test runs.
        wait_for(lambda: metric(cls.admin, "embedgate_pool_urls") >= 3, "the warm keys")

    @classmethod
    def tearDownClass(cls):
        stop(cls.gateway, cls.sim)
        cls.tmp.cleanup()

    def client(self, tenant="acme", which=0, secret=None, **config):
        key_id, derived = self.creds[tenant][which]
        return boto3.client(
            "quicksight",
            region_name="us-east-1",
            endpoint_url=self.endpoint,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret or derived,
            config=Config(**config),
        )

    def metric(self, sample):
        return metric(self.admin, sample)

    def test_a_warm_key_is_served_from_the_pool_with_either_rotated_key(self):
        for which in (0, 1):
            resp = self.client(which=which).get_dashboard_embed_url(
                AwsAccountId=ACCOUNT, DashboardId="sales-2024", IdentityType="QUICKSIGHT", UserArn=user_arn("alice")
            )
            self.assertEqual(resp["Status"], 200)
            self.assertEqual(resp["ResponseMetadata"]["HTTPHeaders"]["x-embedgate-source"], "pool")
            self.assertEqual(resp["RequestId"], resp["ResponseMetadata"]["RequestId"])
            with urllib.request.urlopen(resp["EmbedUrl"]) as page:
                self.assertEqual(page.status, 200)

    def test_0_every_member_of_every_operation_reaches_quicksight_intact(self):
        # Runs first (unittest orders by name): the simulator keeps the last input per
        # operation, so it must run while the refiller is idle (warm keys stocked at start-up,
        # nothing taken yet; tenant sink's requests create no demand).
        with open(os.path.join(ROOT, "tests", "fixtures", "kitchen-sink.json"), encoding="utf-8") as f:
            cases = json.load(f)
        for case in cases:
            body = json.loads(json.dumps(case["Body"]).replace('"Value": "alpha"', '"Value": "sink"'))
            qs = self.client(tenant="sink-domains" if "AllowedDomains" in body else "sink")
            methods = {
                "GetDashboardEmbedUrl": qs.get_dashboard_embed_url,
                "GenerateEmbedUrlForAnonymousUser": qs.generate_embed_url_for_anonymous_user,
                "GenerateEmbedUrlForRegisteredUser": qs.generate_embed_url_for_registered_user,
            }
            with self.subTest(case["Name"]):
                out = methods[case["Operation"]](**body)
                self.assertTrue(out["EmbedUrl"].startswith("http"))
                if case["Operation"] == "GenerateEmbedUrlForAnonymousUser":
                    self.assertTrue(out["AnonymousUserArn"].startswith("arn:aws:quicksight:"))
                self.assertEqual(out["ResponseMetadata"]["HTTPHeaders"]["x-embedgate-source"], "upstream")
                seen = get_json(f"{self.sim_endpoint}/_sim/inputs")[case["Operation"]]
                self.assertEqual(seen, body)

    def test_refusals_are_the_typed_exceptions_and_reach_nothing_upstream(self):
        # Parameter validation off: boto3 would refuse a 5-minute session itself.
        qs = self.client(retries={"total_max_attempts": 1}, parameter_validation=False)
        # The refiller calls QuickSight in the background, so "nothing upstream" is read from the
        # gateway: no miss was fetched and every refusal was counted as one.
        misses = self.metric('embedgate_urls_fetched_total{reason="miss"}')
        counted = lambda outcome, tenant: self.metric(
            f'embedgate_requests_total{{outcome="{outcome}",protocol="quicksight",tenant="{tenant}"}}'
        )
        before = [counted("denied", "acme"), counted("invalid", "acme"), counted("unauthenticated", "-")]
        with self.assertRaises(qs.exceptions.AccessDeniedException) as cm:
            qs.get_dashboard_embed_url(AwsAccountId=ACCOUNT, DashboardId="sales-2024", IdentityType="IAM")
        self.assertIn("IdentityType", cm.exception.response["Error"]["Message"])
        with self.assertRaises(qs.exceptions.AccessDeniedException):
            qs.get_dashboard_embed_url(AwsAccountId="999999999999", DashboardId="sales-2024", IdentityType="ANONYMOUS")
        with self.assertRaises(qs.exceptions.SessionLifetimeInMinutesInvalidException):
            qs.get_dashboard_embed_url(
                AwsAccountId=ACCOUNT, DashboardId="sales-2024", IdentityType="ANONYMOUS", SessionLifetimeInMinutes=5
            )
        with self.assertRaises(qs.exceptions.InvalidParameterValueException):
            qs.generate_embed_url_for_anonymous_user(
                AwsAccountId=ACCOUNT,
                Namespace="default",
                AuthorizedResourceArns=[f"arn:aws:quicksight:us-east-1:{ACCOUNT}:dashboard/sales-2024"],
                ExperienceConfiguration={"Dashboard": {"InitialDashboardId": "sales-2024"}},
                AllowedDomains=["not a domain"],
            )
        for secret, code in (("wrong", "InvalidSignatureException"),):
            with self.assertRaises(ClientError) as cm:
                self.client(secret=secret, retries={"total_max_attempts": 1}).get_dashboard_embed_url(
                    AwsAccountId=ACCOUNT, DashboardId="sales-2024", IdentityType="ANONYMOUS"
                )
            self.assertEqual(cm.exception.response["Error"]["Code"], code)
        unknown = boto3.client(
            "quicksight", region_name="us-east-1", endpoint_url=self.endpoint,
            aws_access_key_id="EGNOSUCHKEY000000001", aws_secret_access_key="x",
            config=Config(retries={"total_max_attempts": 1}),
        )
        with self.assertRaises(ClientError) as cm:
            unknown.get_dashboard_embed_url(AwsAccountId=ACCOUNT, DashboardId="sales-2024", IdentityType="ANONYMOUS")
        self.assertEqual(cm.exception.response["Error"]["Code"], "UnrecognizedClientException")
        self.assertEqual(self.metric('embedgate_urls_fetched_total{reason="miss"}'), misses)
        after = [counted("denied", "acme"), counted("invalid", "acme"), counted("unauthenticated", "-")]
        self.assertEqual([a - b for a, b in zip(after, before)], [2, 2, 2])

    def test_a_throttled_tenant_is_retried_by_boto3_until_served(self):
        # boto3's own retry logic (legacy mode, its default), allowed enough attempts to outlast a
        # 2/s limit with jittered backoff.
        qs = self.client(tenant="slow", retries={"max_attempts": 10})
        before = self.metric('embedgate_inbound_rejections_total{tenant="slow"}')
        for _ in range(3):
            out = qs.get_dashboard_embed_url(AwsAccountId=ACCOUNT, DashboardId="sales-2024", IdentityType="ANONYMOUS")
            self.assertTrue(out["EmbedUrl"].startswith("http"))
        self.assertGreaterEqual(self.metric('embedgate_inbound_rejections_total{tenant="slow"}') - before, 1)

    def test_node_sdk_v3(self):
        """tests/node/compat.test.mjs with @aws-sdk/client-quicksight (scripts/setup.sh installs
        it), against this gateway."""
        node_dir = os.path.join(ROOT, "tests", "node")
        self.assertTrue(
            os.path.isdir(os.path.join(node_dir, "node_modules", "@aws-sdk", "client-quicksight")),
            "run scripts/setup.sh: it installs the JavaScript SDK",
        )
        (key_id, secret), (slow_id, slow_secret) = self.creds["acme"][0], self.creds["slow"][0]
        env = dict(
            os.environ,
            EG_ENDPOINT=self.endpoint, EG_ADMIN=self.admin, EG_ACCOUNT=ACCOUNT,
            EG_KEY_ID=key_id, EG_SECRET=secret, EG_SLOW_KEY_ID=slow_id, EG_SLOW_SECRET=slow_secret,
        )
        run = subprocess.run(
            ["node", "--test", "compat.test.mjs"], cwd=node_dir, env=env, capture_output=True, text=True, timeout=300
        )
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)


def openssl(*args):
    subprocess.run(["openssl", *args], capture_output=True, check=True)


def ec_certificate(tmp, name, subj, *extra):
    """A P-256 key and a certificate for it in `tmp` (`name`.crt, `name`.key): self-signed, or
    signed by the authority `extra` names (`-CA`, `-CAkey`)."""
    cert, key = os.path.join(tmp, name + ".crt"), os.path.join(tmp, name + ".key")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", subj, "-keyout", key, "-out", cert, *extra)
    return cert, key


class DropInOverHttps(unittest.TestCase):
    """`[tls]` on: boto3 pointed at https://, trusting the gateway's CA with `verify=`, gets a
    URL; with only the system's roots it refuses the certificate. With client authorities
    (`tls.client_ca_file`) boto3 presents its portal's certificate with `client_cert=`."""

    def serve(self, tmp, tls_extra="", tenant_extra=""):
        """The simulator and a gateway serving HTTPS with a self-signed certificate (`tls.crt`
        in `tmp`), its `[tls]` and tenant tables extended: the processes, the addresses served,
        and tenant acme's access key id and secret."""
        cert, key = ec_certificate(tmp, "tls", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
        sim, sim_endpoint = start_sim()
        env = dict(os.environ, EMBEDGATE_MASTER_KEY=MASTER)
        path = os.path.join(tmp, "embedgate.toml")
        table = lambda key_id: f"""
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
compat_listen = "127.0.0.1:0"
log_format = "json"
[tls]
cert_file = "{cert}"
key_file = "{key}"
{tls_extra}
{upstream_table(sim_endpoint)}
[[tenants]]
id = "acme"
api_key_sha256 = []
access_key_ids = ["{key_id}"]
default_account = "{ACCOUNT}"
{tenant_extra}
[tenants.policy]
dashboards = ["*"]
namespaces = ["default"]
user_arns = ["arn:aws:quicksight:*:{ACCOUNT}:user/default/*"]
"""
        with open(path, "w", encoding="utf-8") as f:
            f.write(table("EGPLACEHOLDER0000001"))
        out = subprocess.run([BIN, "tenant-credentials", "--config", path, "acme"],
                             env=env, capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if line.startswith(("access key id", "secret access key")))
        key_id, secret = fields["access key id"].strip(), fields["secret access key"].strip()
        with open(path, "w", encoding="utf-8") as f:
            f.write(table(key_id))
        gateway, served = start_gateway(path, env)
        return sim, gateway, served, key_id, secret

    def client(self, served, key_id, secret, verify, client_cert=None):
        return boto3.client(
            "quicksight", region_name="us-east-1", endpoint_url="https://" + served["compat"],
            aws_access_key_id=key_id, aws_secret_access_key=secret, verify=verify,
            config=Config(retries={"max_attempts": 1}, client_cert=client_cert),
        )

    @staticmethod
    def embed(client):
        return client.get_dashboard_embed_url(
            AwsAccountId=ACCOUNT, DashboardId="sales-2024", IdentityType="QUICKSIGHT", UserArn=user_arn("alice")
        )

    def test_boto3_verifies_the_gateways_certificate_and_gets_a_url(self):
        with tempfile.TemporaryDirectory() as tmp:
            sim, gateway, served, key_id, secret = self.serve(tmp)
            try:
                resp = self.embed(self.client(served, key_id, secret, os.path.join(tmp, "tls.crt")))
                self.assertEqual(resp["Status"], 200)
                self.assertTrue(resp["EmbedUrl"].startswith("http"))
                with self.assertRaises(SSLError):
                    self.embed(self.client(served, key_id, secret, True))
            finally:
                stop(gateway, sim)

    def test_boto3_presents_its_portals_client_certificate_and_only_that_one_is_served(self):
        with tempfile.TemporaryDirectory() as tmp:
            ca, ca_key = ec_certificate(tmp, "portals", "/CN=portal authority")
            portal = lambda name: ec_certificate(
                tmp, name, "/CN=" + name, "-CA", ca, "-CAkey", ca_key,
                "-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=clientAuth"
            )
            acme, other = portal("portal.acme.example"), portal("portal.beta.example")
            sim, gateway, served, key_id, secret = self.serve(
                tmp, tls_extra=f'client_ca_file = "{ca}"',
                tenant_extra='client_certificate_names = ["portal.acme.example"]',
            )
            try:
                verify = os.path.join(tmp, "tls.crt")
                resp = self.embed(self.client(served, key_id, secret, verify, client_cert=acme))
                self.assertEqual(resp["Status"], 200)
                with self.assertRaises(ClientError) as refused:
                    self.embed(self.client(served, key_id, secret, verify, client_cert=other))
                self.assertEqual(refused.exception.response["Error"]["Code"], "AccessDeniedException")
                # Without one the handshake is refused (TLS 1.3's alert: certificate required; on
                # a busy machine the connection's reset can reach boto3 before the alert does).
                with self.assertRaises((SSLError, ConnectionClosedError)):
                    self.embed(self.client(served, key_id, secret, verify))
            finally:
                stop(gateway, sim)


if __name__ == "__main__":
    unittest.main(verbosity=2)
