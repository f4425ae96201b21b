-- Synthetic years of mail for maildesk query plans (bench/scale/measure.py fills it).
-- $nt tickets, $nm messages, $ne events, $ni intake rows (a tenth quarantined), $no outbox rows.
SET session_replication_role = replica;  -- no FK triggers while filling
SET synchronous_commit = off;
INSERT INTO blobs (sha256, size, data)
SELECT lpad(g::text, 64, '0'), 40, convert_to('Subject: synthetic ' || g || E'\r\n\r\nbody', 'UTF8')
FROM generate_series(1, 1000) g;
INSERT INTO contacts (id, email, name, created_at)
SELECT g, 'customer' || g || '@example.org', 'Customer ' || g, now() - interval '5 years'
FROM generate_series(1, $nc) g;
INSERT INTO tickets (id, number, subject, normalized_subject, status, priority, requester_id,
  assignee, created_at, updated_at, last_inbound_at, resolved_at, closed_at, support_addresses,
  tags, possible_spam, queue, category, "group")
SELECT g, g, 'Problem number ' || g, 'problem number ' || (g % 50000),
  CASE WHEN g > $nt - $nt / 50 THEN (ARRAY['new','open','pending'])[1 + g % 3]
       WHEN g % 20 = 0 THEN 'resolved' ELSE 'closed' END,
  (ARRAY['low','normal','normal','high','urgent'])[1 + g % 5], 1 + g % $nc,
  'agent' || (g % 40), ts, ts + interval '2 days', ts, ts + interval '1 day', ts + interval '8 days',
  '["support@example.com"]', '[]', g % 97 = 0, 'q' || (g % 5), 'cat' || (g % 12), 'grp' || (g % 6)
FROM (SELECT g, now() - (interval '5 years') * (1 - g::float8 / $nt) AS ts
      FROM generate_series(1, $nt) g) s;
INSERT INTO participants (ticket_id, contact_id, role)
SELECT g, 1 + g % $nc, 'requester' FROM generate_series(1, $nt) g;
INSERT INTO messages (id, ticket_id, dedupe_key, header_message_id, direction, kind, from_addr,
  from_name, to_addrs, cc_addrs, delivered_to, subject, date, text_body, raw_sha256, body_hash,
  created_at)
SELECT g, t, 'm' || g || '@mail.example.org', 'm' || g || '@mail.example.org',
  CASE WHEN g % 2 = 1 THEN 'inbound' ELSE 'outbound' END,
  CASE WHEN g % 2 = 1 THEN 'customer' ELSE 'agent_reply' END,
  'customer' || (1 + t % $nc) || '@example.org', '', '["support@example.com"]', '[]', '[]',
  'Problem number ' || t, ts, repeat('Hello, this is a synthetic body line. ', 8),
  lpad((1 + g % 1000)::text, 64, '0'), md5(g::text), ts
FROM (SELECT g, 1 + (g - 1) / 2 % $nt AS t,
        now() - (interval '5 years') * (1 - g::float8 / $nm) AS ts
      FROM generate_series(1, $nm) g) s;
INSERT INTO intake (id, received_at, source, source_ref, envelope_from, envelope_to, raw_sha256,
  size, header_message_id, state, disposition, attempts, quarantine_reason, processed_at,
  message_pk, ticket_id)
SELECT g, ts, 'lmtp', '', 'customer' || g || '@example.org', '["support@example.com"]',
  lpad((1 + g % 1000)::text, 64, '0'), 4000, 'i' || g || '@mail.example.org',
  CASE WHEN g % 10 = 0 THEN 'quarantined' ELSE 'done' END,
  CASE WHEN g % 10 = 0 THEN 'quarantined' ELSE 'created' END, 1,
  CASE WHEN g % 10 = 0 THEN (CASE WHEN g % 20 = 0 THEN 'spam: score 0.99' ELSE 'unparsable' END) END,
  ts, CASE WHEN g % 10 <> 0 THEN $nm - $ni + g END, CASE WHEN g % 10 <> 0 THEN 1 + g % $nt END
FROM (SELECT g, now() - (interval '5 years') * (1 - g::float8 / $ni) AS ts
      FROM generate_series(1, $ni) g) s;
INSERT INTO events (id, at, kind, ticket_id, intake_id, message_pk, reason, data)
SELECT g, now() - (interval '5 years') * (1 - g::float8 / $ne),
  (ARRAY['created','threaded','status','notified','sla_warning','assigned','spam_scored'])[1 + g % 7],
  1 + g % $nt, CASE WHEN g % 25 = 0 THEN 1 + (g / 25) % $ni END, NULL, 'synthetic', '{}'
FROM generate_series(1, $ne) g;
INSERT INTO outbox (id, created_at, ticket_id, purpose, message_id, envelope_from, recipients,
  recipient_key, raw_sha256, state, attempts, next_attempt_at, sent_at, last_error)
SELECT g, ts, 1 + g % $nt, (ARRAY['ack','agent_reply','resolved'])[1 + g % 3],
  'o' || g || '@maildesk.example.com', 'support@example.com',
  json_build_array('customer' || (1 + g % $nc) || '@example.org'),
  'customer' || (1 + g % $nc) || '@example.org', lpad((1 + g % 1000)::text, 64, '0'),
  CASE WHEN g % 1000 = 0 THEN 'failed' WHEN g % 1000 = 1 THEN 'suppressed'
       WHEN g > $no - 200 THEN 'queued' ELSE 'sent' END,
  1, ts, ts, CASE WHEN g % 1000 = 0 THEN '550 no such user' END
FROM (SELECT g, now() - (interval '5 years') * (1 - g::float8 / $no) AS ts
      FROM generate_series(1, $no) g) s;
-- SLA targets: the sweep keeps rows of ended tickets (satisfied) and of open ones.
INSERT INTO sla_targets (ticket_id, target, instance, policy, status, started_at, warn_at, due_at,
  satisfied_at, breached, elapsed_minutes, target_minutes, computed_at)
SELECT t.id, tg, 0, 'default',
  CASE WHEN t.status IN ('new','open','pending') THEN 'running' ELSE 'satisfied' END,
  t.created_at, t.created_at + interval '3 hours', t.created_at + interval '4 hours',
  CASE WHEN t.status IN ('new','open','pending') THEN NULL ELSE t.created_at + interval '1 hour' END,
  false, 60, 240, now()
FROM tickets t CROSS JOIN (VALUES ('first_response'), ('resolution')) v(tg);
SELECT setval('tickets_id_seq', $nt); SELECT setval('contacts_id_seq', $nc);
SELECT setval('messages_id_seq', $nm); SELECT setval('intake_id_seq', $ni);
SELECT setval('events_id_seq', $ne); SELECT setval('outbox_id_seq', $no);
SET session_replication_role = origin;
VACUUM ANALYZE;
