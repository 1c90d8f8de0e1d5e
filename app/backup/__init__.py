"""Backups of the registry's database: `flask db-backup PATH`, `flask db-restore FILE` (operations: Backup)."""


def init_app(app) -> None:
    from app.backup.cli import backup_command, restore_command

    app.cli.add_command(backup_command)
    app.cli.add_command(restore_command)
