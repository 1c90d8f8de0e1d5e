from app.appnode.cli import main

main()
