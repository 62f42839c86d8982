from django.apps import AppConfig


class MemoryAdminConfig(AppConfig):
    name = "memory_admin"
    verbose_name = "Memory Admin"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from memory_admin.rows import fast_timestamps

        connection_created.connect(fast_timestamps, dispatch_uid="memory_admin.fast_timestamps")
