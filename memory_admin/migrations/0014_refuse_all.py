from django.db import migrations

# sql.WRITE_MANY_ALL's guard: a /txn of puts alone is one statement outside any transaction, and a
# statement that raises keeps nothing. SQL has no way to raise; PL/pgSQL (in every Postgres) does.
FORWARD = """
CREATE OR REPLACE FUNCTION memory_admin_refuse_all(refused bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF refused > 0 THEN
        RAISE EXCEPTION '% of the writes refused: none is kept', refused USING ERRCODE = 'MA409';
    END IF;
    RETURN true;
END
$$
"""
BACKWARD = "DROP FUNCTION IF EXISTS memory_admin_refuse_all(bigint)"


class Migration(migrations.Migration):
    dependencies = [
        ("memory_admin", "0013_positioned_indexes"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
