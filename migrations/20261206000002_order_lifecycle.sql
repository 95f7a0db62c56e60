-- The order lifecycle (src/sale/lifecycle.rs): where each order stands.
-- Orders before it, and orders of a sale without a payment window, are
-- final when bought: `paid`. A reserved order is marked `reserved` by the
-- persister that inserts it, unless its move arrived first; the move
-- (paid, cancelled, expired) sets the state and its time, by Redis's clock
-- (ms since the Unix epoch). An order moves once, so state_at is set once.
ALTER TABLE orders ADD COLUMN state TEXT NOT NULL DEFAULT 'paid';
ALTER TABLE orders ADD COLUMN state_at BIGINT;
