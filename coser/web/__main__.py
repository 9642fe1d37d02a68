from coser import cli
from coser.web.app import main

if __name__ == "__main__":
    cli.main(main)
