"""The simulator against boto3: parsed responses, ClientError codes, retries, signatures.

Starts `embedgate sim` on an ephemeral port (binary from $EMBEDGATE_BIN, default
target/debug/embedgate) and talks to it only through boto3, as a portal would talk to QuickSight.
"""

import json
import os
import subprocess
import sys
import unittest
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from harness import ACCOUNT, BIN, ROOT, user_arn
from harness import SIM_KEY_ID as KEY_ID
from harness import SIM_SECRET as SECRET


class SimulatorWithBoto3(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proc = subprocess.Popen(
            [BIN, "sim", "--listen", "127.0.0.1:0", "--workers", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        first = cls.proc.stdout.readline()
        if "listening on " not in first:
            cls.proc.kill()
            raise RuntimeError(f"simulator did not start: {first!r}")
        cls.endpoint = first.split("listening on ")[1].strip()

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(timeout=10)

    def client(self, secret=SECRET, **config):
        return boto3.client(
            "quicksight",
            region_name="us-east-1",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=secret,
            config=Config(**config),
        )

    def knobs(self, **patch):
        req = urllib.request.Request(
            f"{self.endpoint}/_sim/knobs",
            data=json.dumps(patch).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req) as resp:
            return json.load(resp)

    def ledger(self):
        with urllib.request.urlopen(f"{self.endpoint}/_sim/ledger") as resp:
            return json.load(resp)

    def inputs(self):
        with urllib.request.urlopen(f"{self.endpoint}/_sim/inputs") as resp:
            return json.load(resp)

    def test_every_member_of_every_operation_arrives_intact(self):
        """The kitchen-sink requests the Rust tests also send: boto3's parameters are QuickSight's
        member names, so each body is passed as is, and the simulator must have parsed all of it."""
        with open(os.path.join(ROOT, "tests", "fixtures", "kitchen-sink.json"), encoding="utf-8") as f:
            cases = json.load(f)
        qs = self.client()
        methods = {
            "GetDashboardEmbedUrl": qs.get_dashboard_embed_url,
            "GenerateEmbedUrlForAnonymousUser": qs.generate_embed_url_for_anonymous_user,
            "GenerateEmbedUrlForRegisteredUser": qs.generate_embed_url_for_registered_user,
        }
        for case in cases:
            with self.subTest(case["Name"]):
                out = methods[case["Operation"]](**case["Body"])
                self.assertTrue(out["EmbedUrl"].startswith("http"))
                self.assertEqual(self.inputs()[case["Operation"]], case["Body"])

    def error_code(self, call, **kwargs):
        with self.assertRaises(ClientError) as cm:
            call(**kwargs)
        return cm.exception.response["Error"]["Code"], cm.exception.response

    def test_all_three_operations_return_parsed_responses(self):
        qs = self.client()
        out = qs.get_dashboard_embed_url(
            AwsAccountId=ACCOUNT,
            DashboardId="sales-2024",
            IdentityType="QUICKSIGHT",
            UserArn=user_arn("alice"),
            SessionLifetimeInMinutes=60,
            ResetDisabled=True,
        )
        self.assertEqual(out["Status"], 200)
        self.assertIn("/embed/", out["EmbedUrl"])
        self.assertTrue(out["EmbedUrl"].startswith(self.endpoint))
        self.assertEqual(out["RequestId"], out["ResponseMetadata"]["RequestId"])

        out = qs.generate_embed_url_for_anonymous_user(
            AwsAccountId=ACCOUNT,
            Namespace="default",
            AuthorizedResourceArns=[f"arn:aws:quicksight:us-east-1:{ACCOUNT}:dashboard/demo"],
            ExperienceConfiguration={"Dashboard": {"InitialDashboardId": "demo"}},
            SessionTags=[{"Key": "tenant", "Value": "acme"}],
            AllowedDomains=["https://app.example.com"],
        )
        self.assertIn("/dashboards/demo?", out["EmbedUrl"])
        self.assertTrue(out["AnonymousUserArn"].startswith("arn:aws:quicksight:"))

        out = qs.generate_embed_url_for_registered_user(
            AwsAccountId=ACCOUNT,
            UserArn=user_arn("bob"),
            ExperienceConfiguration={"Dashboard": {"InitialDashboardId": "finance"}},
        )
        self.assertIn("/dashboards/finance?", out["EmbedUrl"])

    def test_client_errors_carry_quicksight_codes(self):
        qs = self.client(retries={"total_max_attempts": 1, "mode": "standard"})
        code, resp = self.error_code(
            qs.get_dashboard_embed_url, AwsAccountId=ACCOUNT, DashboardId="bad.id", IdentityType="IAM"
        )
        self.assertEqual(code, "InvalidParameterValueException")
        self.assertEqual(resp["ResponseMetadata"]["HTTPStatusCode"], 400)
        code, _ = self.error_code(
            qs.get_dashboard_embed_url,
            AwsAccountId=ACCOUNT,
            DashboardId="sales-2024",
            IdentityType="IAM",
            SessionLifetimeInMinutes=700,
        )
        self.assertEqual(code, "SessionLifetimeInMinutesInvalidException")
        code, resp = self.error_code(
            qs.get_dashboard_embed_url, AwsAccountId=ACCOUNT, DashboardId="missing", IdentityType="IAM"
        )
        self.assertEqual(code, "ResourceNotFoundException")
        self.assertEqual(resp["ResponseMetadata"]["HTTPStatusCode"], 404)
        code, _ = self.error_code(
            qs.generate_embed_url_for_registered_user,
            AwsAccountId=ACCOUNT,
            UserArn=user_arn("nobody"),
            ExperienceConfiguration={"Dashboard": {"InitialDashboardId": "finance"}},
        )
        self.assertEqual(code, "QuickSightUserNotFoundException")

        self.knobs(throttle_next=1)
        code, resp = self.error_code(
            qs.get_dashboard_embed_url, AwsAccountId=ACCOUNT, DashboardId="sales-2024", IdentityType="IAM"
        )
        self.assertEqual(code, "ThrottlingException")
        self.assertEqual(resp["ResponseMetadata"]["HTTPStatusCode"], 429)

    def test_legacy_retry_mode_makes_five_attempts_on_throttling(self):
        qs = self.client(retries={"mode": "legacy"})
        before = self.ledger()["throttled"]
        self.knobs(throttle_next=10, retry_after_ms=1)
        try:
            code, _ = self.error_code(
                qs.get_dashboard_embed_url, AwsAccountId=ACCOUNT, DashboardId="sales-2024", IdentityType="IAM"
            )
        finally:
            self.knobs(throttle_next=0)
        self.assertEqual(code, "ThrottlingException")
        self.assertEqual(self.ledger()["throttled"] - before, 5)

    def test_a_request_signed_with_a_wrong_secret_is_refused(self):
        qs = self.client(secret="not-the-secret", retries={"total_max_attempts": 1, "mode": "standard"})
        code, resp = self.error_code(
            qs.get_dashboard_embed_url, AwsAccountId=ACCOUNT, DashboardId="sales-2024", IdentityType="IAM"
        )
        self.assertEqual(code, "InvalidSignatureException")
        self.assertEqual(resp["ResponseMetadata"]["HTTPStatusCode"], 403)

    def test_a_url_redeems_exactly_once(self):
        url = self.client().get_dashboard_embed_url(
            AwsAccountId=ACCOUNT, DashboardId="sales-2024", IdentityType="IAM"
        )["EmbedUrl"]
        with urllib.request.urlopen(url) as resp:
            self.assertEqual(resp.status, 200)
            self.assertIn("dashboard sales-2024", resp.read().decode())
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(url)
        self.assertEqual(cm.exception.code, 403)


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print(f"{max(result.testsRun - failed, 0)} passed, {failed} failed")
    sys.exit(1 if failed or not result.testsRun else 0)
