// A real OpenID Provider for the console's sign-in tests: panva's certified `oidc-provider`.
//
// Usage: node provider.mjs CONFIG.json. The config names the private signing JWKS, the clients,
// the resource (the broker's audience) and the accounts with their tenant and roles. The server
// listens on a free loopback port first, so that the issuer URL can hold that port, then prints
// one JSON line {"issuer": ...} on stdout once it answers.
//
// What is configured here beyond the library's defaults, and why:
// - PKCE is required for every client (S256 only, the library's default method);
// - access tokens are JWTs for the resource the console asks for (RFC 8707 resource indicator),
//   signed with the same key the broker's auth.issuers JWKS trusts, with the account's tenant
//   and roles as claims: the token the console gets is one the broker's gRPC API accepts;
// - first-party clients: the grant is created at login, so no consent page (devInteractions'
//   login form stays: any login name with any password, which is what a test needs).
import { readFileSync } from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const accounts = config.accounts;
  const provider = new Provider(issuer, {
    clients: config.clients,
    jwks: config.jwks,
    cookies: { keys: [config.cookie_key] },
    pkce: { required: () => true },
    scopes: ['openid', config.resource_scope],
    features: {
      devInteractions: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => config.resource,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => {
          if (resource !== config.resource) throw new Provider.errors.InvalidTarget();
          return {
            scope: config.resource_scope,
            audience: config.resource,
            accessTokenTTL: 600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: config.alg } },
          };
        },
      },
    },
    async findAccount(ctx, id) {
      if (!accounts[id]) return undefined;
      return { accountId: id, claims: () => ({ sub: id }) };
    },
    async extraTokenClaims(ctx, token) {
      if (token.kind !== 'AccessToken') return undefined;
      const account = accounts[token.accountId];
      return account ? { tenant: account.tenant, roles: account.roles } : undefined;
    },
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope(`openid ${config.resource_scope}`);
      grant.addResourceScope(config.resource, config.resource_scope);
      await grant.save();
      return grant;
    },
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
