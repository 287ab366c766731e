"""components/speech"""
