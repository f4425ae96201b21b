"""Erasure on request (GDPR art. 17) and the retention period of closed tickets."""
