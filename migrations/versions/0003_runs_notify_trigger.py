"""runs: announce every committed change with pg_notify (PostgreSQL only)

Revision ID: 0003
Revises: 0002

Listeners (engine.notify.PgListener) wake their watchers from these notifications, so
a change made by any process reaches every API process without polling. NOTIFY is
delivered at commit and dropped on rollback. Other databases have no LISTEN: their
processes poll instead, and this migration does nothing there.
"""
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
        CREATE OR REPLACE FUNCTION interlock_notify_run() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('interlock_runs', NEW.id || ':' || NEW.last_seq || ':' || NEW.status);
            RETURN NULL;
        END
        $$
    """)
    op.execute("""
        CREATE TRIGGER runs_notify AFTER INSERT OR UPDATE ON runs
        FOR EACH ROW EXECUTE FUNCTION interlock_notify_run()
    """)


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS runs_notify ON runs")
    op.execute("DROP FUNCTION IF EXISTS interlock_notify_run()")
