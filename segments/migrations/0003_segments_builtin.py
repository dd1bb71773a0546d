"""Give every existing workspace the built-in segments (new workspaces get them from a post_save signal)."""

from django.db import migrations


def install(apps, schema_editor):
    from segments.builtin import install_builtin_segments

    if schema_editor.connection.vendor == "postgresql":
        # Row-level security: this transaction may write every workspace's rows.
        schema_editor.execute("SELECT set_config('app.bypass_rls', 'on', true)")
    Workspace = apps.get_model("crm_site", "Workspace")
    Segment = apps.get_model("segments", "Segment")
    for tenant_id in Workspace.objects.values_list("pk", flat=True):
        install_builtin_segments(Segment, tenant_id)


class Migration(migrations.Migration):
    dependencies = [("segments", "0002_segments_row_level_security"), ("crm_site", "0002_row_level_security")]

    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
