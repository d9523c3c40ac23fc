-- Each provider account's caps as slots shared by every dispatch and poll process (issue
-- 18): `max_concurrent` rows of kind `call` (one call at a time each) and ⌈max_per_second⌉
-- rows of kind `rate` (one call start per rest, a second for an integer rate). A process
-- holds a slot while `holder` names it and `lease_until` is ahead, renews its leases a few
-- times a second, and gives a slot back by clearing `holder`; a rate slot given back keeps
-- `lease_until` at the end of the rest it still owes, so no one takes it earlier. A process
-- that dies leaves its slots to lapse with their lease. The rows are made (and trimmed to
-- the caps) by the processes at start-up, from the accounts file.
CREATE TABLE provider_slots (
    account     text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('call', 'rate')),
    slot        integer     NOT NULL CHECK (slot >= 0),
    -- `<stage> <host>:<pid> <id>` of the process holding it; NULL: free once lease_until
    -- (if any) has passed.
    holder      text,
    lease_until timestamptz,
    PRIMARY KEY (account, kind, slot)
);

-- What each process wants of each account's slots, so that every process computes the same
-- fair shares: calls running and waiting, and rate slots used or wanted. A row counts while
-- `seen_until` is ahead; rows a day old are deleted at start-up.
CREATE TABLE provider_slot_wants (
    account    text        NOT NULL,
    holder     text        NOT NULL,
    calls      integer     NOT NULL CHECK (calls >= 0),
    rates      integer     NOT NULL CHECK (rates >= 0),
    seen_until timestamptz NOT NULL,
    PRIMARY KEY (account, holder)
);
