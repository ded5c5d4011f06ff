// A real OpenID Connect provider (panva's oidc-provider) for tests/test_e2e_oidc.py.
// Usage: node provider.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI [ACCESS_TOKEN_TTL_SECONDS]
// Login: the provider's development login form (any login name, any password); consent is
// granted automatically (a first-party app). Prints "oidc-provider listening ISSUER" when ready.
import Provider from 'oidc-provider';

const [port, clientId, clientSecret, redirectUri, ttl = '300'] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  // offline_access would be needed for refresh tokens otherwise: issue them to this client anyway.
  issueRefreshToken: async () => true,
  ttl: { AccessToken: Number(ttl), IdToken: Number(ttl), RefreshToken: 3600, Session: 3600, Interaction: 600, Grant: 3600 },
  features: { devInteractions: { enabled: true } },
  // Consent granted on first use: the test logs in as a user, it doesn't click "allow".
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile email offline_access');
    await grant.save();
    return grant;
  },
});
provider.listen(Number(port), '127.0.0.1', () => console.log(`oidc-provider listening ${issuer}`));
