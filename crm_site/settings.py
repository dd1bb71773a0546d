"""Rapport settings: one source, read from environment variables with safe defaults.

The embedded default (no variables set) is SQLite in WAL mode and a filesystem Celery broker, so a
newcomer needs nothing but Python. DATABASE_URL and CELERY_BROKER_URL switch to PostgreSQL and Redis.
RAPPORT_ENV=production turns on the settings that `manage.py check --deploy` asks for.
"""

import os
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("RAPPORT_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    """Return the boolean value of an environment variable ("1", "true", "yes", "on" are true)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    """Return a comma-separated environment variable as a list of non-empty stripped items."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


RAPPORT_ENV = os.environ.get("RAPPORT_ENV", "development")
PRODUCTION = RAPPORT_ENV == "production"
TESTING = env_bool("RAPPORT_TESTING", "pytest" in sys.modules)

DEBUG = env_bool("DJANGO_DEBUG", not PRODUCTION)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when RAPPORT_ENV=production.")
    SECRET_KEY = "dev-only-insecure-key-rapport-do-not-use-in-production-0123456789abcdef"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")
# Absolute base of links in e-mails (unsubscribe, tracking), which have no request to read it from.
SITE_URL = os.environ.get("RAPPORT_SITE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "crispy_forms",
    "crispy_bootstrap5",
    "django_celery_beat",
    "crm_site",
    "customers",
    "lifecycle",
    "segments",
    "campaigns",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "crm_site.tenancy.WorkspaceMiddleware",
]

ROOT_URLCONF = "crm_site.urls"
WSGI_APPLICATION = "crm_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.csp",
                "crm_site.context_processors.workspace",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------------
VAR_DIR.mkdir(parents=True, exist_ok=True)
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'rapport.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0 if TESTING else 60)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets the web process read while the worker writes; the timeout waits out short locks.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-rapport.sqlite3")}
IS_POSTGRES = DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (login throttling, rate limits) -------------------------------------------------------
CACHE_URL = os.environ.get("CACHE_URL", "")
if CACHE_URL.startswith("redis://"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
elif TESTING:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    # Shared by web and worker processes without a server.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# --- Auth ---------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
LOGIN_THROTTLE_ATTEMPTS = int(os.environ.get("RAPPORT_LOGIN_THROTTLE_ATTEMPTS", "5"))
LOGIN_THROTTLE_WINDOW_SECONDS = int(os.environ.get("RAPPORT_LOGIN_THROTTLE_WINDOW", "900"))
# How many reverse proxies in front of the web process append to X-Forwarded-For (0: use REMOTE_ADDR).
TRUSTED_PROXY_COUNT = int(os.environ.get("RAPPORT_TRUSTED_PROXY_COUNT", "0"))

# --- JSON API (/api/v1/) ----------------------------------------------------------------------------
# Fixed-window rate limit per API key, in the cache above (use Redis when several web processes run).
API_RATE_LIMIT = int(os.environ.get("RAPPORT_API_RATE_LIMIT", "600"))
API_RATE_WINDOW_SECONDS = int(os.environ.get("RAPPORT_API_RATE_WINDOW", "60"))
API_MAX_BODY_BYTES = int(os.environ.get("RAPPORT_API_MAX_BODY_BYTES", str(5 * 1024 * 1024)))
API_MAX_BATCH = int(os.environ.get("RAPPORT_API_MAX_BATCH", "1000"))

# --- I18n / time --------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files: vendored at install time from the npm registry into static/vendor ------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
MEDIA_ROOT = VAR_DIR / "media"
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# --- Crispy forms -------------------------------------------------------------------------------
CRISPY_ALLOWED_TEMPLATE_PACKS = "bootstrap5"
CRISPY_TEMPLATE_PACK = "bootstrap5"

# --- E-mail: SMTP by default; EMAIL_URL-like variables pick host and port ------------------------
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
if not PRODUCTION and "EMAIL_BACKEND" not in os.environ and "EMAIL_HOST" not in os.environ:
    # No mail server on a newcomer's machine: write mails to var/mail so the demo never fails a send.
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = VAR_DIR / "mail"
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = 30
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Rapport <no-reply@rapport.localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Celery -------------------------------------------------------------------------------------
# Tests default to an in-process broker: a task queued by a test without a worker must not wait in var/ for
# the next `make run` (the celery_worker fixture switches to Redis).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or ("memory://" if TESTING else "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _queue_dir = VAR_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_queue_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir / "queue"),
        "data_folder_out": str(_queue_dir / "queue"),
        "processed_folder": str(_queue_dir / "processed"),
        "control_folder": str(_queue_dir / "control"),  # kombu's default is ./control, in the source tree
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
# Progress lives in the database (crm_site.jobs), so no result backend is needed.
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "lifecycle.*": {"queue": "lifecycle"},
    "campaigns.tasks.dispatch*": {"queue": "dispatch"},
    "campaigns.tasks.send*": {"queue": "send"},
}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Campaign sending (campaigns.sending) ---------------------------------------------------------
# SMS: campaigns.sms.FileSmsBackend (var/sms), ConsoleSmsBackend, or HttpSmsBackend (a provider's REST API).
RAPPORT_SMS_BACKEND = os.environ.get("RAPPORT_SMS_BACKEND", "campaigns.sms.FileSmsBackend")
RAPPORT_SMS_FILE_PATH = VAR_DIR / "sms"
RAPPORT_SMS_HTTP_URL = os.environ.get("RAPPORT_SMS_HTTP_URL", "")
RAPPORT_SMS_HTTP_TOKEN = os.environ.get("RAPPORT_SMS_HTTP_TOKEN", "")
RAPPORT_SEND_BATCH_SIZE = int(os.environ.get("RAPPORT_SEND_BATCH_SIZE", "200"))
# A claimed batch not finished within its lease is re-claimed by another sender (a killed worker).
RAPPORT_SEND_LEASE_SECONDS = int(os.environ.get("RAPPORT_SEND_LEASE_SECONDS", "120"))
RAPPORT_SEND_MAX_ATTEMPTS = int(os.environ.get("RAPPORT_SEND_MAX_ATTEMPTS", "6"))
RAPPORT_SEND_RETRY_BASE_SECONDS = int(os.environ.get("RAPPORT_SEND_RETRY_BASE_SECONDS", "60"))
# Send tasks run per workspace at once, and how long one keeps claiming batches before handing over.
RAPPORT_SEND_PARALLELISM = int(os.environ.get("RAPPORT_SEND_PARALLELISM", "2"))
RAPPORT_SEND_TASK_SECONDS = int(os.environ.get("RAPPORT_SEND_TASK_SECONDS", "50"))
# How often beat kicks the dispatcher and the senders (send times themselves live in the database).
RAPPORT_DISPATCH_EVERY_SECONDS = int(os.environ.get("RAPPORT_DISPATCH_EVERY_SECONDS", "60"))
RAPPORT_SEND_EVERY_SECONDS = int(os.environ.get("RAPPORT_SEND_EVERY_SECONDS", "15"))
# django-anymail: ESP settings come from the environment (ANYMAIL_* ), e.g. EMAIL_BACKEND=anymail.backends.postmark.EmailBackend.
# Its tracking/inbound webhooks (/anymail/...) are mounted only with a basic-auth secret ("user:password").
ANYMAIL = {"WEBHOOK_SECRET": os.environ.get("ANYMAIL_WEBHOOK_SECRET") or ("rapport:test-webhook" if TESTING else "")}
for _name, _value in os.environ.items():
    if _name.startswith("ANYMAIL_") and _name != "ANYMAIL_WEBHOOK_SECRET":
        ANYMAIL[_name.removeprefix("ANYMAIL_")] = _value

# --- Security -----------------------------------------------------------------------------------
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "font-src": [CSP.SELF],
    "connect-src": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
    "base-uri": [CSP.SELF],
    "object-src": [CSP.NONE],
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie; kept default-compatible.
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", str(60 * 60 * 24 * 365)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("RAPPORT_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
