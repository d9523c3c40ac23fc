-- Which tier topic an order's next check waits on, for `orderflow order show` and support.
ALTER TABLE poll_chains ADD COLUMN tier text;
