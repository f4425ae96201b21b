"""maildesk: an email-centric support ticket daemon."""
