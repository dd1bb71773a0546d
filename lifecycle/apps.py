from django.apps import AppConfig


class LifecycleConfig(AppConfig):
    name = "lifecycle"

    def ready(self):
        from lifecycle import listing

        listing.register()
