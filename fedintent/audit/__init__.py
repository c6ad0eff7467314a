"""Empirical privacy audit: membership inference against the federated model
(``fedintent audit-privacy``, docs/PRIVACY_AUDIT.md)."""
