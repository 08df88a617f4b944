from bench.rerank.run import run

if __name__ == "__main__":
    run()
