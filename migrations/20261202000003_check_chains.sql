-- One word for the status-check activity (docs/design/lifecycle.md): the table of each
-- order's chain of status checks is `check_chains`, as the topics are
-- `orders.status-check.*` and the metrics `orderflow_check_*`. Only names change; rows,
-- columns and constraints stay as they are.

ALTER TABLE poll_chains RENAME TO check_chains;
ALTER INDEX poll_chains_pkey RENAME TO check_chains_pkey;
ALTER INDEX poll_chains_overdue_idx RENAME TO check_chains_overdue_idx;
ALTER INDEX poll_chains_given_up_idx RENAME TO check_chains_given_up_idx;
ALTER TABLE check_chains RENAME CONSTRAINT poll_chains_seq_check TO check_chains_seq_check;
ALTER TABLE check_chains RENAME CONSTRAINT poll_chains_attempts_check TO check_chains_attempts_check;
ALTER TABLE check_chains RENAME CONSTRAINT poll_chains_final_state_check TO check_chains_final_state_check;
