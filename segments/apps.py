from django.apps import AppConfig
from django.db.models.signals import post_save


class SegmentsConfig(AppConfig):
    name = "segments"
    verbose_name = "Segments"

    def ready(self):
        from crm_site.models import Workspace

        post_save.connect(_workspace_saved, sender=Workspace, dispatch_uid="segments.builtin_segments")


def _workspace_saved(sender, instance, created, raw=False, **kwargs):
    """A new workspace gets its built-in segments at once (fixtures loaded raw are left alone)."""
    if created and not raw:
        from segments.builtin import ensure_builtin_segments

        ensure_builtin_segments(instance)
