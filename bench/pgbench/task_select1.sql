BEGIN;
INSERT INTO floor_task (user_id, title, completed, created_at, updated_at) VALUES ('bench', 'Task', false, now(), now()) RETURNING id;
SELECT 1;
COMMIT;
