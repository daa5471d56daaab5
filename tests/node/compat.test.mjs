// Drop-in mode with the official AWS SDK for JavaScript v3 (@aws-sdk/client-quicksight, pinned in
// package.json), unmodified: only `endpoint` and the tenant's credentials point it at embedgate.
//
// Run by tests/python/test_compat_boto3.py, which starts the simulator and the gateway and passes
// them in the environment: EG_ENDPOINT (compatible listener), EG_ADMIN, EG_ACCOUNT,
// EG_KEY_ID/EG_SECRET (tenant acme), EG_SLOW_KEY_ID/EG_SLOW_SECRET (tenant slow, 2 requests/s).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  QuickSightClient,
  GetDashboardEmbedUrlCommand,
  GenerateEmbedUrlForAnonymousUserCommand,
  AccessDeniedException,
  SessionLifetimeInMinutesInvalidException,
} from "@aws-sdk/client-quicksight";

const env = process.env;
const ACCOUNT = env.EG_ACCOUNT;
const userArn = (name) => `arn:aws:quicksight:us-east-1:${ACCOUNT}:user/default/${name}`;

// A client as a portal builds one, plus a middleware that keeps the last response's headers
// (the SDK's output has no member for x-embedgate-source).
function client(accessKeyId, secretAccessKey, maxAttempts = 3) {
  const qs = new QuickSightClient({
    region: "us-east-1",
    endpoint: env.EG_ENDPOINT,
    credentials: { accessKeyId, secretAccessKey },
    maxAttempts,
  });
  qs.lastHeaders = {};
  qs.middlewareStack.add(
    (next) => async (args) => {
      const out = await next(args);
      qs.lastHeaders = out.response.headers;
      return out;
    },
    { step: "deserialize", name: "keepHeaders" },
  );
  return qs;
}

async function metric(sample) {
  const text = await (await fetch(`${env.EG_ADMIN}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(sample + " "));
  return line ? Number(line.split(" ").pop()) : 0;
}

test("a warm key is served from the pool, and the URL redeems", async () => {
  const qs = client(env.EG_KEY_ID, env.EG_SECRET);
  const out = await qs.send(
    new GetDashboardEmbedUrlCommand({
      AwsAccountId: ACCOUNT,
      DashboardId: "sales-2024",
      IdentityType: "QUICKSIGHT",
      UserArn: userArn("carol"),
    }),
  );
  assert.equal(out.Status, 200);
  assert.equal(qs.lastHeaders["x-embedgate-source"], "pool");
  assert.equal(out.RequestId, out.$metadata.requestId);
  const page = await fetch(out.EmbedUrl, { redirect: "manual" });
  assert.equal(page.status, 200);
});

test("an anonymous URL comes with its AnonymousUserArn", async () => {
  const qs = client(env.EG_KEY_ID, env.EG_SECRET);
  const out = await qs.send(
    new GenerateEmbedUrlForAnonymousUserCommand({
      AwsAccountId: ACCOUNT,
      Namespace: "default",
      AuthorizedResourceArns: [`arn:aws:quicksight:us-east-1:${ACCOUNT}:dashboard/sales-2024`],
      ExperienceConfiguration: { Dashboard: { InitialDashboardId: "sales-2024" } },
      SessionTags: [{ Key: "tenant", Value: "acme" }],
    }),
  );
  assert.match(out.AnonymousUserArn, new RegExp(`^arn:aws:quicksight:us-east-1:${ACCOUNT}:user/default/`));
});

test("refusals are the SDK's typed exceptions and reach nothing upstream", async () => {
  const qs = client(env.EG_KEY_ID, env.EG_SECRET, 1);
  // The refiller calls QuickSight in the background: "nothing upstream" is read from the gateway.
  const misses = await metric('embedgate_urls_fetched_total{reason="miss"}');
  await assert.rejects(
    qs.send(new GetDashboardEmbedUrlCommand({ AwsAccountId: ACCOUNT, DashboardId: "sales-2024", IdentityType: "IAM" })),
    (e) => e instanceof AccessDeniedException && /IdentityType/.test(e.message),
  );
  await assert.rejects(
    qs.send(new GetDashboardEmbedUrlCommand({ AwsAccountId: "999999999999", DashboardId: "sales-2024", IdentityType: "ANONYMOUS" })),
    AccessDeniedException,
  );
  await assert.rejects(
    qs.send(
      new GetDashboardEmbedUrlCommand({
        AwsAccountId: ACCOUNT,
        DashboardId: "sales-2024",
        IdentityType: "ANONYMOUS",
        SessionLifetimeInMinutes: 5,
      }),
    ),
    SessionLifetimeInMinutesInvalidException,
  );
  const wrong = client(env.EG_KEY_ID, "not-the-secret", 1);
  await assert.rejects(
    wrong.send(new GetDashboardEmbedUrlCommand({ AwsAccountId: ACCOUNT, DashboardId: "sales-2024", IdentityType: "ANONYMOUS" })),
    (e) => e.name === "InvalidSignatureException" && e.$metadata.httpStatusCode === 403,
  );
  assert.equal(await metric('embedgate_urls_fetched_total{reason="miss"}'), misses);
});

test("a throttled tenant is retried by the SDK until served", async () => {
  const qs = client(env.EG_SLOW_KEY_ID, env.EG_SLOW_SECRET, 10);
  const sample = 'embedgate_inbound_rejections_total{tenant="slow"}';
  const before = await metric(sample);
  let retried = 0;
  for (let i = 0; i < 3; i++) {
    const out = await qs.send(
      new GetDashboardEmbedUrlCommand({ AwsAccountId: ACCOUNT, DashboardId: "sales-2024", IdentityType: "ANONYMOUS" }),
    );
    assert.ok(out.EmbedUrl.startsWith("http"));
    retried += out.$metadata.attempts - 1;
  }
  assert.ok(retried >= 1, "the SDK retried throttled attempts");
  assert.ok((await metric(sample)) - before >= 1);
});
