-- Each provider account's caps as slots shared by every dispatch and poll process (issue
-- 18): `max_concurrent` rows of kind `call` (one call at a time each) and ⌈max_per_second⌉
-- rows of kind `rate` (one call start per rest, a second for an integer rate), at most
-- 1,000. The lease is the holder's, not the slot's: a process renews one row of
-- `provider_slot_holders` per account a few times a second, and every slot naming it is
-- its own while that row lives. A process that dies leaves its row to lapse; the next
-- process that wants slots deletes the lapsed row and frees its slots in one transaction.
-- The rows are made (and trimmed to the caps) by the processes at start-up, from the
-- accounts file.
CREATE TABLE provider_slots (
    account text        NOT NULL,
    kind    text        NOT NULL CHECK (kind IN ('call', 'rate')),
    slot    integer     NOT NULL CHECK (slot >= 0),
    -- The holder (a row of provider_slot_holders) whose slot it is; NULL: free from
    -- `free_at` on (NULL: at once).
    holder  text,
    -- A rate slot given back rests until then, so that no one calls on it earlier.
    free_at timestamptz,
    PRIMARY KEY (account, kind, slot)
);

-- The processes sharing each account's slots: the lease under which they hold them, and
-- what each wants, so that every process computes the same fair shares (calls running and
-- waiting, rate slots used or wanted). `holder` names one run of one process
-- (`<stage> <host>:<pid> <random>`); a process whose lease lapsed joins again under a new
-- name and starts from no slots.
CREATE TABLE provider_slot_holders (
    account     text        NOT NULL,
    holder      text        NOT NULL,
    calls       integer     NOT NULL CHECK (calls >= 0),
    rates       integer     NOT NULL CHECK (rates >= 0),
    lease_until timestamptz NOT NULL,
    PRIMARY KEY (account, holder)
);
